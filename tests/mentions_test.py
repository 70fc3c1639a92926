"""data_prep/mentions.py: which entities an image's OCR text names, against a brute-force reading."""
import numpy as np

from data_prep import mentions


def brute_force(names, texts, ocr_texts, max_mentions):
  """Every (entity, key) pair tried against every text, the definition read literally."""
  keys = {i: mentions.keys_of(n, texts.get(n, '')) for i, n in enumerate(names)}
  owners = {}
  for i, ks in keys.items():
    for k in ks:
      owners.setdefault(k, set()).add(i)
  out = np.full((len(names), max_mentions), -1, np.int32)
  for h, text in enumerate(ocr_texts):
    padded, joined = f" {' '.join(mentions.words(text))} ", mentions.words(text)
    found = {}
    for e, ks in keys.items():
      for k in ks:
        if e == h or len(owners[k]) > 1:
          continue
        hit = (f' {k} ' in padded) if k.isascii() else any(k in w for w in joined)
        if hit:
          found[e] = max(found.get(e, 0), len(k))
    best = sorted(found, key=lambda e: (-found[e], e))[:max_mentions]
    out[h, :len(best)] = best
  return out


def test_named_entities_match_brute_force():
  names = ['brand_kavren', 'brand_solvi', 'brand_red_bull', 'product_0001', 'product_0002',
           'shop_north', 'author_ana_lima', '耐克', 'the', 'a_b']
  texts = {'brand_kavren': 'brand KAVREN', 'author_ana_lima': 'Ana Lima', '耐克': 'Nike 耐克'}
  ocr = ['', 'KAVREN', 'ana lima writes', 'Red Bull energy — by SOLVI', '耐克运动鞋 nike',
         'x', 'brand', 'kavrens', 'solvi solvi 0001', 'the shop NORTH']
  got = mentions.named_entities(names, texts, ocr, max_mentions=3)
  np.testing.assert_array_equal(got, brute_force(names, texts, ocr, 3))
  ids = {n: i for i, n in enumerate(names)}
  assert got[1].tolist() == [ids['brand_kavren'], -1, -1]            # its text's distinctive word
  assert got[2].tolist() == [ids['author_ana_lima'], -1, -1]
  assert got[3].tolist() == [ids['brand_red_bull'], ids['brand_solvi'], -1]  # 'red bull' first
  assert got[4, 0] == ids['耐克']                                   # inside a word without spaces
  assert ids['shop_north'] in got[9] and ids['the'] in got[9]        # 'the' is one entity's name
  assert (got[5:8] == -1).all()                        # 'x' too short; 'brand' is shared; no prefix
  assert got[8].tolist() == [ids['brand_solvi'], ids['product_0001'], -1]


def test_an_entity_never_names_itself_and_empty_inputs_name_nothing():
  names = ['acme_corp', 'acme_corp_2']
  got = mentions.named_entities(names, {}, ['acme corp', ''], max_mentions=2)
  assert got.tolist() == [[-1, -1], [-1, -1]]                        # 'acme corp' is its own key
  assert mentions.named_entities(names, {}, ['', ''], 2).tolist() == [[-1, -1], [-1, -1]]
  assert mentions.named_entities(names, {}, ['acme corp 2'], 0).shape == (2, 0)


def test_load_features_turns_mentions_into_tokens_and_needs_the_offset(tmp_path):
  import pytest  # pylint: disable=g-import-not-at-top
  from imkga_jax import prepared  # pylint: disable=g-import-not-at-top
  e = 3
  arrays = dict(h_fig=np.zeros((e, 2), np.float32), h_ocr=np.zeros((e, 2), np.float32),
                image_present=np.ones(e, bool), ocr_present=np.ones(e, bool))
  np.savez(tmp_path / prepared.FEATURES_FILE, **arrays,
           mentions=np.asarray([[2, -1], [-1, -1], [0, 1]], np.int32))
  table = prepared.load_features(str(tmp_path), e, 2, 2, max_mentions=2, entity_offset=10)
  assert table['mentions'].tolist() == [[12, -1], [-1, -1], [10, 11]]
  with pytest.raises(ValueError, match='mentions has shape'):
    prepared.load_features(str(tmp_path), e, 2, 2, max_mentions=3, entity_offset=10)
  with pytest.raises(ValueError, match='entity_offset'):
    prepared.load_features(str(tmp_path), e, 2, 2, max_mentions=2)
  np.savez(tmp_path / prepared.FEATURES_FILE, **arrays)  # written without mentions: none named
  table = prepared.load_features(str(tmp_path), e, 2, 2, max_mentions=2, entity_offset=10)
  assert (table['mentions'] == -1).all() and table['mentions'].shape == (e, 2)
