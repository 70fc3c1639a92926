"""Repository-level checks: configs load, CI runs the README's test command, import direction."""
import ast
import importlib
import os
import re
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), '..')
CONFIGS = [('default', None), ('default', 'smoke'), ('synthetic', None), ('openbg', None),
           ('structure', 'umls'), ('structure', 'kinship'), ('structure', 'wn18rr'),
           ('structure', ''), ('structure', 'umls,smoke')]


@pytest.mark.parametrize('name,arg', CONFIGS)
def test_config_loads(name, arg):
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config() if arg is None else module.get_config(arg)
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
  """Every module `path` imports (at any depth of the file, functions included)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module in ('imkga_jax', 'data_prep'):
      yield from (f'{node.module}.{a.name}' for a in node.names)   # the modules it names
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      if node.module in ('imkga_jax', 'data_prep'):  # `from imkga_jax import kg`
        yield from (f'{node.module}.{a.name}' for a in node.names)


# DESIGN §2: what each place may import of the project (module prefixes), and what it must not
# import at all. A module not listed under its folder's rule falls under the folder's rule.
PROJECT = ('imkga_jax', 'data_prep', 'configs')
LEAF = {'imkga_jax.kg', 'imkga_jax.readers', 'imkga_jax.data_root', 'imkga_jax.files',
        'imkga_jax.config_check', 'imkga_jax.datasets'}
FORMAT = LEAF | {'imkga_jax.prepared'}
RULES = {
    'imkga_jax/kg.py': (LEAF, ('jax', 'flax', 'tensorflow', 'optax')),
    'imkga_jax/readers.py': (LEAF, ('jax', 'flax', 'tensorflow', 'optax')),
    'imkga_jax/files.py': (LEAF, ('jax', 'flax', 'tensorflow', 'optax')),
    'imkga_jax/data_root.py': (LEAF, ('jax', 'flax', 'tensorflow', 'optax')),
    'imkga_jax/config_check.py': (LEAF, ('jax', 'flax', 'tensorflow', 'optax')),
    # Datasets by name: the graph, its readers and the file helpers (and tqdm), nothing heavier.
    'imkga_jax/datasets.py': ({'imkga_jax.kg', 'imkga_jax.readers', 'imkga_jax.files'},
                              ('jax', 'flax', 'tensorflow', 'optax', 'numpy')),
    'imkga_jax/prepared.py': (FORMAT, ('jax', 'flax', 'tensorflow', 'optax')),
    'imkga_jax/rtg.py': (FORMAT, ('flax', 'tensorflow', 'optax')),
    'imkga_jax/input_pipeline.py': (FORMAT, ('flax', 'optax')),
    'imkga_jax/masks.py': (FORMAT, ('tensorflow', 'optax')),
    # The typed head's loss normalises over what the decoder's path grammar allows (one grammar).
    'imkga_jax/losses.py': (FORMAT | {'imkga_jax.grammar'}, ('tensorflow', 'optax')),
    'imkga_jax/sharding.py': (FORMAT, ('tensorflow', 'optax')),
    'imkga_jax/optim/': (set(), ('tensorflow',)),  # the reusable optax transform: no project code
    'imkga_jax/optim/__init__.py': ({'imkga_jax.optim'}, ('tensorflow',)),
    'imkga_jax/models/': (FORMAT | {'imkga_jax.masks', 'imkga_jax.models'}, ('tensorflow', 'optax')),
    'imkga_jax/priors.py': (FORMAT, ('jax', 'flax', 'tensorflow', 'optax')),
    'imkga_jax/ranking.py': (FORMAT | {'imkga_jax.priors'}, ('jax', 'flax', 'tensorflow', 'optax')),
    'imkga_jax/grammar.py': (FORMAT, ('tensorflow', 'optax')),
    'imkga_jax/step_models.py': (FORMAT | {'imkga_jax.models'}, ('tensorflow', 'optax')),
    'imkga_jax/decode.py': (FORMAT | {'imkga_jax.models', 'imkga_jax.rtg', 'imkga_jax.grammar',
                                      'imkga_jax.step_models'}, ('tensorflow', 'optax')),
    'imkga_jax/explain.py': (FORMAT | {'imkga_jax.ranking'}, ('tensorflow', 'optax')),
    'imkga_jax/evaluator.py': (FORMAT | {'imkga_jax.decode', 'imkga_jax.explain', 'imkga_jax.grammar',
                                         'imkga_jax.priors', 'imkga_jax.ranking', 'imkga_jax.rtg',
                                         'imkga_jax.step_models', 'imkga_jax.checkpoints',
                                         'imkga_jax.sharding', 'imkga_jax.models'},
                               ('tensorflow', 'optax')),
    # The picture of one query's answers: matplotlib and Pillow on the names explain.py gives.
    'imkga_jax/explain_png.py': (FORMAT, ('jax', 'flax', 'tensorflow', 'optax')),
    # The end summary of the main job: reads the workdir's JSON files, prints; no jax.
    'imkga_jax/run_summary.py': (FORMAT | {'imkga_jax.explain'}, ('jax', 'flax', 'tensorflow',
                                                                   'optax')),
    'imkga_jax/checkpoints.py': (FORMAT | {'imkga_jax.models', 'imkga_jax.sharding'},
                                 ('tensorflow', 'optax')),
    'imkga_jax/baselines/': (FORMAT | {'imkga_jax.ranking', 'imkga_jax.priors',
                                       'imkga_jax.baselines'}, ('tensorflow',)),
    # train.py, evaluate.py and config_check.py may import any library module.
    'imkga_jax/': ({'imkga_jax'}, ()),
    # The offline stages: the graph, the format module and return-to-go, never the reader.
    'data_prep/': (FORMAT | {'imkga_jax.rtg', 'data_prep'}, ()),
}


def _rule(relative):
  for key in sorted(RULES, key=len, reverse=True):
    if relative == key or (key.endswith('/') and relative.startswith(key)):
      return RULES[key]
  raise AssertionError(f'{relative}: no import rule in tests/repo_test.py RULES (DESIGN §2)')


def test_import_direction_covers_design_section_2():
  checked = 0
  for top in ('imkga_jax', 'data_prep'):
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      for name in sorted(f for f in files if f.endswith('.py')):
        path = os.path.join(folder, name)
        relative = os.path.relpath(path, ROOT).replace(os.sep, '/')
        allowed, forbidden = _rule(relative)
        for module in _imports(path):
          root = module.split('.')[0]
          if root in PROJECT:
            assert module == 'imkga_jax' or any(
                module == a or module.startswith(a + '.') for a in allowed), (relative, module)
          assert root not in forbidden, (relative, module)
        checked += 1
  assert checked > 25
  # The KG, its readers and the file helpers: numpy and the standard library only.
  for name in ('kg', 'readers', 'data_root', 'files'):
    modules = list(_imports(os.path.join(ROOT, 'imkga_jax', f'{name}.py')))
    heavy = [m for m in modules if m.split('.')[0] not in sys.stdlib_module_names | {'numpy'}
             and m.split('.')[0] not in PROJECT]
    assert not heavy, (name, heavy)
