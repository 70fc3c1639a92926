"""Repository-level checks: configs load, CI runs the README's test command, import direction."""
import ast
import importlib
import os
import re
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), '..')
CONFIGS = ['default', 'synthetic', 'openbg', 'umls', 'kinship']


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config.model.variant in ('no_img', 'mkg', 'rl', 'mkg_rl')
  assert config.data.unknown_entities in ('error', 'skip', 'keep')
  config.lock()  # launch.py locks configs; every key must already exist.


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    ci = f.read()
  ci_command = re.search(r"^TEST_COMMAND='(.*)'$", ci, re.M).group(1)
  after_tests_heading = readme.split('Tests (this is exactly what CI runs)', 1)[1]
  readme_command = re.search(r'```bash\n(.*)\n```', after_tests_heading).group(1)
  assert ci_command == readme_command


def _imports(path):
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module in ('imkga_jax', 'data_prep'):
      yield from (f'{node.module}.{a.name}' for a in node.names)   # the modules it names
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module


def test_import_direction():
  """DESIGN §2: no module of imkga_jax imports data_prep; the optax transform imports no project code."""
  for folder, _, files in os.walk(os.path.join(ROOT, 'imkga_jax')):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        modules = list(_imports(path))
        assert not [m for m in modules if m.startswith('data_prep')], path
        if path.endswith(os.path.join('optim', 'modulation.py')):
          assert not [m for m in modules if m.startswith(('imkga_jax', 'configs'))], path
  kg_modules = list(_imports(os.path.join(ROOT, 'imkga_jax', 'kg.py')))
  assert not [m for m in kg_modules if m.split('.')[0] in ('jax', 'flax', 'tensorflow')]
  # The KG, its readers and the file helpers: numpy and the standard library only.
  light = ('kg', 'readers', 'data_root', 'files')
  for name in light:
    modules = list(_imports(os.path.join(ROOT, 'imkga_jax', f'{name}.py')))
    heavy = [m for m in modules if m.split('.')[0] not in sys.stdlib_module_names | {'numpy'}
             and m not in {f'imkga_jax.{n}' for n in light}]
    assert not heavy, (name, heavy)
