"""Training trajectories (rule paths, direct answers, negative walks) with return-to-go, as TFRecord.

`build_trajectories(kg, config, prepared_dir)` (the stage `data_prep.prepare` runs):
1. mines rules (`data_prep.rules.mine_rules`) → `PREPARED/rules.json`;
2. grounds every train triple and its inverse (`ground_paths`): up to k rule paths
   `r1 e1 … rn t <eos>` (kind 0); a query without one becomes the direct trajectory `t <eos>` (kind 1);
3. adds `negative_share` × (positive trajectories) random walks of 1..max_hops hops from h that
   neither visit t nor end at a known train answer of (h, r) (kind 2, R̂_1 = r_bad);
4. computes return-to-go with `imkga_jax.rtg.rtg_sequence` twice: with the cosine similarity of the
   entities' `image_vector`s (features.npz; every image missing when the file is absent) and with the
   target's image treated as missing (the input pipeline picks one per example, `rtg.target_dropout`);
5. shuffles the examples with the seed and writes them with the TFDS builder `ImkgaTrajectories` as
   `config.trajectories.num_shards` TFRecord shards into `PREPARED/trajectories/` (atomically: written
   beside, then moved in).

Stored features, packed into three because TFDS serialises each feature of each example in Python
(a 50k-example trial here wrote 3.7k examples/s with seven features, 7k/s with three):
  query [4] int32 = (head_token, relation_token, target entity id, kind);
  actions [L] int32; rtg [2, L] float32 = (true similarity, target unknown).
`imkga_jax.input_pipeline` unpacks them into the contract's keys (`imkga_jax.prepared` holds the
format both sides share; `format.json` records the sequence length and the direct form's reach).

Example:
  >>> stats = build_trajectories(kg, config, '/tmp/w/prepared')          # doctest: +SKIP
  >>> stats['trajectories']['direct_share']                               # doctest: +SKIP
  0.12
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_prep import grounding
from data_prep import rules as rules_lib
from data_prep import train_graph
from imkga_jax import kg as kg_lib
from imkga_jax import prepared as prepared_lib
from imkga_jax import rtg as rtg_lib


@dataclasses.dataclass
class Trajectories:
  """Examples as arrays: `[N]` query columns, `[N, L]` actions, `[N, 2, L]` return-to-go."""
  head_token: np.ndarray
  relation_token: np.ndarray
  target: np.ndarray
  kind: np.ndarray
  actions: np.ndarray
  rtg: np.ndarray

  def __len__(self) -> int:
    return len(self.kind)

  def take(self, index: np.ndarray) -> 'Trajectories':
    return Trajectories(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


def path_actions(kg: kg_lib.KnowledgeGraph, relations: np.ndarray, entities: np.ndarray,
                 seq_len: int) -> np.ndarray:
  """`[m, L]` tokens `r1 e1 … rn en <eos> <pad>…` from `[m, H]` relation/entity ids (-1 = unused)."""
  m, hops = relations.shape
  if 2 * hops + 1 > seq_len:
    raise ValueError(f'paths of {hops} hops need {2 * hops + 1} tokens, more than L={seq_len}')
  out = np.full((m, seq_len), kg_lib.PAD, np.int32)
  used = relations >= 0  # [m, H]
  out[:, 0:2 * hops:2] = np.where(used, kg.space.relation_token(relations), kg_lib.PAD)
  out[:, 1:2 * hops:2] = np.where(used, kg.space.entity_token(entities), kg_lib.PAD)
  out[np.arange(m), 2 * used.sum(1)] = kg_lib.EOS
  return out


def sample_negative_walks(graph: train_graph.TrainGraph, queries: np.ndarray, num: int, max_hops: int,
                          rng: np.random.Generator, max_rounds: int = 8):
  """Random walks from the heads of random queries that miss their tails.

  A walk has 1..max_hops hops (uniform), distinct entities, never visits the query's tail, and ends at
  an entity that is not a train answer of (h, r).

  Returns:
    `(query index [n], relations [n, max_hops], entities [n, max_hops])`, -1 where unused, n ≤ num
    (fewer only when walks keep failing; the caller counts the shortfall).
  """
  got_q, got_r, got_e, have = [], [], [], 0
  for _ in range(max_rounds if graph.num_edges and len(queries) else 0):
    if have >= num:
      break
    m = 2 * (num - have) + 16
    qi = rng.integers(len(queries), size=m)
    hops = rng.integers(1, max_hops + 1, size=m)
    x, rel, y = queries[qi, 0], queries[qi, 1], queries[qi, 2]
    ok = np.ones(m, bool)
    cur, visited = x.copy(), [x]
    rels, ents = np.full((m, max_hops), -1), np.full((m, max_hops), -1)
    for step in range(max_hops):
      live = step < hops
      lo, hi = graph.src_indptr[cur], graph.src_indptr[cur + 1]
      ok &= ~live | (hi > lo)
      pick = np.where(hi > lo, lo + (rng.random(m) * (hi - lo)).astype(np.int64), 0)
      nxt = graph.dst[pick]
      bad = nxt == y
      for v in visited:
        bad |= nxt == v
      ok &= ~live | ~bad
      rels[:, step] = np.where(live, graph.rel[pick], -1)
      ents[:, step] = np.where(live, nxt, -1)
      cur = np.where(live, nxt, cur)
      visited.append(np.where(live, nxt, -1))
    ok &= ~graph.has_edge(x, rel, cur)
    keep = np.flatnonzero(ok)[:num - have]
    got_q.append(qi[keep]), got_r.append(rels[keep]), got_e.append(ents[keep])
    have += len(keep)
  if not got_q:
    return np.zeros(0, np.int64), np.zeros((0, max_hops), np.int64), np.zeros((0, max_hops), np.int64)
  return np.concatenate(got_q), np.concatenate(got_r), np.concatenate(got_e)


def load_image_vectors(prepared_dir: str,
                       kg: kg_lib.KnowledgeGraph) -> tuple[np.ndarray, np.ndarray] | None:
  """Unit-normalised `image_vector` rows and `image_present` from features.npz, or None if absent."""
  path = prepared_lib.path(prepared_dir, prepared_lib.FEATURES_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    vectors, present = f['image_vector'].astype(np.float32), f['image_present'].astype(bool)
  if len(vectors) != kg.num_entities or len(present) != kg.num_entities:
    raise ValueError(f'{path}: {len(vectors)} image_vector rows for {kg.num_entities} entities; '
                     'features.npz is stale, delete it and re-run prepare')
  norm = np.linalg.norm(vectors, axis=1, keepdims=True)
  present &= norm[:, 0] > 0
  return np.where(present[:, None], vectors / np.maximum(norm, 1e-12), 0.0), present


def image_similarity(actions: np.ndarray, target: np.ndarray, kg: kg_lib.KnowledgeGraph,
                     images: tuple[np.ndarray, np.ndarray] | None, chunk: int = 65536):
  """`(sim [N, L], known [N, L])`: cosine of each entity action's image to the target's."""
  sim = np.zeros(actions.shape, np.float32)
  known = np.zeros(actions.shape, bool)
  if images is None:
    return sim, known
  unit, present = images
  rows, cols = np.nonzero(kg.space.is_entity(actions))
  ent = kg.space.token_to_entity(actions[rows, cols])
  tgt = target[rows]
  ok = present[ent] & present[tgt]
  rows, cols, ent, tgt = rows[ok], cols[ok], ent[ok], tgt[ok]
  for s in range(0, len(rows), chunk):
    sl = slice(s, s + chunk)
    sim[rows[sl], cols[sl]] = np.einsum('nd,nd->n', unit[ent[sl]], unit[tgt[sl]])
  known[rows, cols] = True
  return sim, known


ALSO_DIRECT = ('none', 'image_heads', 'all')


def also_direct_mask(kg: kg_lib.KnowledgeGraph, queries: np.ndarray, mode: str) -> np.ndarray:
  """Which queries get the direct trajectory `t <eos>` even when a rule grounds them, `[q] bool`.

  'none': only ungrounded queries are direct (SQUIRE's and the paper's reading); 'image_heads': also
  every query whose head entity has an image, so the model learns to answer from h_fig / h_ocr (facts
  that only the image shows have no path at test time); 'all': every query, so step 0 also scores
  every entity for every training query, like a 1-vs-all embedding model.
  """
  if mode not in ALSO_DIRECT:
    raise ValueError(f'trajectories.also_direct must be one of {ALSO_DIRECT}, got {mode!r}')
  if mode == 'all':
    return np.ones(len(queries), bool)
  if mode == 'none':
    return np.zeros(len(queries), bool)
  return image_head_mask(kg, queries)


def image_head_mask(kg: kg_lib.KnowledgeGraph, queries: np.ndarray) -> np.ndarray:
  """`[q] bool`: whether each query's head entity has an image."""
  return kg.has_image()[queries[:, 0]]


def assemble(kg: kg_lib.KnowledgeGraph, config: Any, graph: train_graph.TrainGraph,
             ruleset: rules_lib.RuleSet, images, seed: int) -> tuple[Trajectories, dict]:
  """Grounds, adds direct and negative trajectories and computes both return-to-go rows."""
  cfg, max_hops = config.rules, int(config.trajectories.max_hops)
  seq_len = prepared_lib.config_sequence_length(config)
  queries = kg.with_inverses('train').astype(np.int64)  # [q, 3]
  start = time.time()
  paths = grounding.ground_paths(graph, ruleset, queries, paths_per_triple=int(cfg.paths_per_triple),
                                 paths_per_rule=int(cfg.paths_per_rule),
                                 fanout=int(cfg.grounding_fanout), seed=seed, max_length=max_hops)
  grounding_seconds = time.time() - start
  grounded = np.zeros(len(queries), bool)
  grounded[paths.query] = True
  direct = np.flatnonzero(~grounded | also_direct_mask(kg, queries, config.trajectories.also_direct))
  rng = np.random.default_rng([seed, 47])
  num_pos = len(paths.query) + len(direct)
  num_neg = int(round(float(config.trajectories.negative_share) * num_pos))
  neg_q, neg_r, neg_e = sample_negative_walks(graph, queries, num_neg, max_hops, rng)
  if len(neg_q) < num_neg:
    logging.warning('trajectories: only %d of %d negative walks found (walks kept failing)',
                    len(neg_q), num_neg)
  direct_actions = np.full((len(direct), seq_len), kg_lib.PAD, np.int32)
  direct_actions[:, 0] = kg.space.entity_token(queries[direct, 2])
  direct_actions[:, 1] = kg_lib.EOS
  query_index = np.concatenate([paths.query, direct, neg_q])
  kind = np.concatenate([np.full(len(paths.query), prepared_lib.KIND_RULE),
                         np.full(len(direct), prepared_lib.KIND_DIRECT),
                         np.full(len(neg_q), prepared_lib.KIND_NEGATIVE)]).astype(np.int32)
  actions = np.concatenate([path_actions(kg, paths.relations, paths.entities, seq_len),
                            direct_actions, path_actions(kg, neg_r, neg_e, seq_len)])
  q = queries[query_index]
  target = q[:, 2].astype(np.int32)
  consts = rtg_lib.constants_from_config(config, kg.space)
  r1 = np.where(kind == prepared_lib.KIND_NEGATIVE, consts.r_bad, consts.r_good).astype(np.float32)
  sim, known = image_similarity(actions, target, kg, images)
  rtg = np.stack([rtg_lib.rtg_sequence(actions, r1, sim, known, consts, np),
                  rtg_lib.rtg_sequence(actions, r1, 0.0, False, consts, np)], axis=1)  # [N, 2, L]
  traj = Trajectories(head_token=kg.space.entity_token(q[:, 0]).astype(np.int32),
                      relation_token=kg.space.relation_token(q[:, 1]).astype(np.int32), target=target,
                      kind=kind, actions=actions.astype(np.int32), rtg=rtg.astype(np.float32))
  hops = np.bincount(paths.hops, minlength=max_hops + 1)
  stats = {'queries': int(len(queries)), 'queries_with_rule_paths': int(grounded.sum()),
           'rule_paths': int(len(paths.query)),
           'paths_per_hops': {str(n): int(hops[n]) for n in range(1, max_hops + 1)},
           'direct': int(len(direct)), 'direct_also_grounded': int(grounded[direct].sum()),
           'direct_unique': int(len(np.unique(direct))),
           'direct_repeated': int(len(direct) - len(np.unique(direct))),
           'direct_share': round(len(direct) / max(num_pos, 1), 4),
           'negatives': int(len(neg_q)), 'negatives_requested': num_neg,
           'self_loop_queries': int(np.sum(queries[:, 0] == queries[:, 2])),
           'examples': int(len(traj)), 'seq_len': seq_len,
           'image_similarity': (prepared_lib.FEATURES_FILE if images is not None
                                else 'none (all images missing)'),
           'grounding_seconds': round(grounding_seconds, 2)}
  return traj, stats


class ImkgaTrajectories(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of the training trajectories (one `train` split, TFRecord, order kept).

  Defined outside a TFDS package, so `_info` builds `tfds.core.DatasetInfo(builder=self, ...)` itself.
  The examples are shuffled (seeded) before writing and TFDS's own shuffling is off, so shards and
  per-process slices hold random mixtures of relations.
  """
  VERSION = tfds.core.Version('1.0.0')
  # Nothing is downloaded, so there are no URL checksums to find next to the code; TFDS 4.9.10's lookup
  # of that folder needs the uninstalled `importlib_resources` for a builder inside a regular package.
  code_path = None
  RELEASE_NOTES = {'1.0.0': 'query [4], actions [L], rtg [2, L] (true / target-unknown similarity).'}

  def __init__(self, *, trajectories: Trajectories | None = None, seq_len: int, **kwargs):
    self._trajectories = trajectories
    self._seq_len = int(seq_len)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    length = self._seq_len
    return tfds.core.DatasetInfo(
        builder=self,
        description=('IMKGA-SM training trajectories. query = (head_token, relation_token, target '
                     'entity id, kind 0 rule / 1 direct / 2 negative); actions = r1 e1 … t <eos> '
                     '<pad>…; rtg[0] = return-to-go with the true image similarity, rtg[1] with the '
                     'target image treated as missing.'),
        features=tfds.features.FeaturesDict({
            'query': tfds.features.Tensor(shape=(4,), dtype=np.int32),
            'actions': tfds.features.Tensor(shape=(length,), dtype=np.int32),
            'rtg': tfds.features.Tensor(shape=(2, length), dtype=np.float32),
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    if self._trajectories is None:
      raise ValueError('ImkgaTrajectories was built without trajectories; pass trajectories=...')
    return {'train': self._generate_examples(self._trajectories)}

  def _generate_examples(self, traj: Trajectories):
    query = np.stack([traj.head_token, traj.relation_token, traj.target, traj.kind], 1)  # [N, 4]
    for i in range(len(traj)):
      yield i, {'query': query[i], 'actions': traj.actions[i], 'rtg': traj.rtg[i]}


def write_trajectories(traj: Trajectories, out_dir: str, seq_len: int, num_shards: int) -> None:
  """Writes `traj` in order as TFRecord shards into `out_dir` (replaced atomically)."""
  if not len(traj):
    raise ValueError(f'no trajectories to write into {out_dir}: the train split produced none')
  parent = os.path.dirname(os.path.abspath(out_dir))
  stage = os.path.join(parent, f'.{os.path.basename(out_dir)}.tmp')
  shutil.rmtree(stage, ignore_errors=True)
  builder = ImkgaTrajectories(trajectories=traj, seq_len=seq_len, data_dir=stage,
                              file_format='tfrecord')
  builder.download_and_prepare(
      download_dir=os.path.join(stage, 'downloads'),
      download_config=tfds.download.DownloadConfig(num_shards=max(1, min(num_shards, len(traj)))))
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(str(builder.data_path), out_dir)
  shutil.rmtree(stage)


def build_trajectories(kg: kg_lib.KnowledgeGraph, config: Any, prepared_dir: str) -> dict:
  """The prepare stage: rules.json and `trajectories/` in `prepared_dir` (see the module docstring).

  Args:
    kg: the knowledge graph (train split used).
    config: project config (`rules`, `trajectories`, `rtg`, `seed`).
    prepared_dir: output folder; `features.npz` there, when present, gives the image similarities.

  Returns:
    `{'rules': mining stats, 'trajectories': grounding/writing stats}` for stats.json.
  """
  if int(config.rules.max_length) > int(config.trajectories.max_hops):
    raise ValueError(f'config.rules.max_length={config.rules.max_length} exceeds '
                     f'config.trajectories.max_hops={config.trajectories.max_hops}; paths would not '
                     'fit')
  os.makedirs(prepared_dir, exist_ok=True)
  seed = int(config.seed)
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  ruleset = rules_lib.mine_rules(kg, config, graph=graph)
  ruleset.save(prepared_lib.path(prepared_dir, prepared_lib.RULES_FILE), kg)
  images = load_image_vectors(prepared_dir, kg)
  traj, stats = assemble(kg, config, graph, ruleset, images, seed)
  traj = traj.take(np.random.default_rng([seed, 53]).permutation(len(traj)))
  start = time.time()
  num_shards = int(config.trajectories.num_shards)
  write_trajectories(traj, prepared_lib.path(prepared_dir, prepared_lib.TRAJECTORIES_DIR),
                     prepared_lib.config_sequence_length(config), num_shards)
  stats.update(num_shards=max(1, min(num_shards, len(traj))),
               writing_seconds=round(time.time() - start, 2),
               format=prepared_lib.write_format(prepared_dir, config))
  logging.info('trajectories: %d examples (%d rule paths, %d direct, %d negative) written to %s',
               stats['examples'], stats['rule_paths'], stats['direct'], stats['negatives'],
               prepared_lib.path(prepared_dir, prepared_lib.TRAJECTORIES_DIR))
  return {'rules': ruleset.stats, 'trajectories': stats}
