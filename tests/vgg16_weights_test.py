"""Tests of data_prep/vgg16_weights.py on hostile input: crafted .pth records, files that lie."""
import collections
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from data_prep import vgg16_weights
from tests import vgg16_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_records(path, records, blobs=None):
  """A torch-format zip whose tensors are `name -> (storage key, offset, size, stride)` verbatim.

  Only the record types a real state dict uses (OrderedDict, _rebuild_tensor_v2, FloatStorage).
  `blobs` maps storage key -> bytes (default: 16 float32 per key named in the records).
  """
  class Storage:
    def __init__(self, key):
      self.key = key

  class Tensor:
    def __init__(self, key, offset, size, stride):
      self.args = (Storage(key), offset, size, stride, False, collections.OrderedDict())

  blobs = blobs if blobs is not None else {
      key: np.arange(16, dtype='<f4').tobytes() for key, *_ in records.values()}
  with vgg16_test._fake_torch() as torch:
    class Pickler(pickle.Pickler):
      def persistent_id(self, obj):
        if isinstance(obj, Storage):
          return ('storage', torch.FloatStorage, obj.key, 'cpu', 16)
        return None

      def reducer_override(self, obj):
        if isinstance(obj, Tensor):
          return torch._utils._rebuild_tensor_v2, obj.args
        return NotImplemented
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(collections.OrderedDict(
        (name, Tensor(*rec)) for name, rec in records.items()))
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', buf.getvalue())
    z.writestr('archive/byteorder', 'little')
    for key, blob in blobs.items():
      z.writestr(f'archive/data/{key}', blob)


# name -> (records, blobs or None): each must be rejected, naming the state-dict key.
CRAFTED = {
    'offset_past_the_end': ({'w': ('0', 10 ** 9, (4,), (1,))}, None),
    'stride_past_the_end': ({'w': ('0', 0, (4, 4), (1 << 20, 1))}, None),
    'size_past_the_end': ({'w': ('0', 8, (4, 4), (4, 1))}, None),
    'overflowing_stride': ({'w': ('0', 0, (2, 2), (1 << 62, 1 << 62))}, None),
    'negative_offset': ({'w': ('0', -8, (4,), (1,))}, None),
    'negative_stride': ({'w': ('0', 15, (4,), (-1,))}, None),
    'negative_size': ({'w': ('0', 0, (-4, 4), (4, 1))}, None),
    'stride_count': ({'w': ('0', 0, (4, 4), (1,))}, None),
    'zero_stride_amplifies': ({'w': ('0', 0, (1 << 20, 1 << 20), (0, 0))}, None),
    'not_integers': ({'w': ('0', 0.5, (4,), (1,))}, None),
    'bytes_not_a_multiple_of_itemsize': ({'w': ('0', 0, (2,), (1,))}, {'0': b'\x00' * 7}),
}


_PROBE = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {root!r})
    from data_prep import vgg16_weights
    out = {{}}
    for name, path in json.loads(sys.argv[1]).items():
      try:
        arrays = vgg16_weights.read_torch_zip(path)
        out[name] = 'read ' + str({{k: v.shape for k, v in arrays.items()}})
      except ValueError as e:
        out[name] = 'ValueError ' + str(e)
    print(json.dumps(out))
''')


def test_crafted_tensor_records_are_rejected_naming_file_and_key(tmp_path):
  """Each file here made the landed reader segfault or copy foreign memory; run in a subprocess so
  a crash fails this test instead of killing pytest."""
  paths = {}
  for name, (records, blobs) in CRAFTED.items():
    paths[name] = str(tmp_path / f'{name}.pth')
    write_records(paths[name], records, blobs)
  proc = subprocess.run([sys.executable, '-c', _PROBE.format(root=ROOT), json.dumps(paths)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f'reader crashed (rc {proc.returncode}): {proc.stderr[-2000:]}'
  outcome = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, message in outcome.items():
    assert message.startswith('ValueError '), (name, message)
    assert paths[name] in message and "state-dict key 'w'" in message, (name, message)


def test_in_bounds_views_still_read(tmp_path):
  path = str(tmp_path / 'ok.pth')
  write_records(path, {'t': ('0', 1, (3, 2), (1, 3)), 'last': ('0', 15, (1,), (1,)),
                       'empty': ('0', 16, (0, 4), (4, 1))})
  arrays = vgg16_weights.read_torch_zip(path)
  np.testing.assert_array_equal(arrays['t'], np.arange(16, dtype=np.float32)[1:][
      np.arange(3)[:, None] + 3 * np.arange(2)[None]])
  assert arrays['last'].tolist() == [15.0] and arrays['empty'].shape == (0, 4)


def test_storage_record_missing_from_the_zip(tmp_path):
  path = str(tmp_path / 'missing.pth')
  write_records(path, {'w': ('../../etc/passwd', 0, (4,), (1,))}, blobs={})
  with pytest.raises(pickle.UnpicklingError, match=r"missing\.pth: storage '\.\./\.\./etc/passwd' "
                                                   'names no record of the zip'):
    vgg16_weights.read_torch_zip(path)


@pytest.mark.parametrize('suffix', ['.h5', '.weights.h5', '.safetensors'])
def test_text_file_with_a_weights_suffix_names_the_path(tmp_path, suffix):
  path = str(tmp_path / f'vgg16{suffix}')
  with open(path, 'w') as f:
    f.write('this is not a weights file\n')
  with pytest.raises(ValueError, match=rf'{path}: not a readable'):
    vgg16_weights.load_weights(path)


def test_text_file_named_pth_names_the_path(tmp_path):
  path = str(tmp_path / 'vgg16.pth')
  with open(path, 'w') as f:
    f.write('text')
  with pytest.raises(ValueError, match=rf'{path}: not a zip'):
    vgg16_weights.load_weights(path)
