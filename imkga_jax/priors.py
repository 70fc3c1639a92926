"""Opt-in ranking priors: rules that move some entities ahead of the others, for every model alike.

The standard protocol ranks by the model's scores alone. A prior is a second opinion taken from the
train graph, not from the model: for each query relation it names the entities that *rank first*;
`Priors.apply` shifts each row's scores so that every reached entity of that group ranks above every
other entity, each group keeping the model's order (-inf stays unreached). The ranker applies the
priors named in `config.ranking.priors` to IMKGA-SM and to the baselines the same way, and every
table that uses them also shows the models without them.

A prior is anything with a `key` and a `first(kg) -> [2R, E] bool` table (`Prior`). Two ship:

* `answer_type=M`: entities whose train signature (the relations on their train edges) looks like
  the train answers of the query relation, with a match of at least M (`type_match`);
* `functional_inverse=F`: AMIE's partial completeness: when the inverse r' of the query relation is
  functional on train (distinct heads over facts >= F), an entity that already has its one r'-answer
  is not a new answer of r (a product already sold by another shop, for (shop, sold_by⁻¹, ?)).

Example:
  >>> priors = Priors.from_names(kg, ('answer_type=0.2',))              # doctest: +SKIP
  >>> ranked_scores = priors.apply(scores, query_relations)              # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from imkga_jax import kg as kg_lib

# Relations with fewer train facts than this are never taken as functional: two facts with two
# distinct heads say nothing about a one-answer-per-head law.
FUNCTIONAL_MIN_FACTS = 20


class Prior(Protocol):
  """A ranking prior: `first(kg)[r, e]` = entity e ranks first for query relation r."""
  key: str

  def first(self, kg: kg_lib.KnowledgeGraph) -> np.ndarray:
    ...


def type_match(kg: kg_lib.KnowledgeGraph) -> np.ndarray:
  """`[2R, E]` float32: how much each entity looks like the train answers of each query relation.

  An entity's signature is the set of relations of its train edges (inverses included). For query
  relation r, `share[r, r']` is the fraction of r's train answers whose signature holds r'; the match
  of entity e is the mean of `share[r, r']` over e's signature (1 for an entity with no train edge:
  nothing is known against it).
  """
  num_rel = 2 * kg.num_relations
  triples = kg.with_inverses('train')
  signature = np.zeros((kg.num_entities, num_rel), np.float32)  # [E, 2R]
  signature[triples[:, 0], triples[:, 1]] = 1.0
  answers = np.zeros((num_rel, kg.num_entities), np.float32)  # [2R, E]
  answers[triples[:, 1], triples[:, 2]] = 1.0
  share = (answers @ signature) / np.maximum(answers.sum(axis=1, keepdims=True), 1.0)  # [2R, 2R]
  degree = signature.sum(axis=1)  # [E]
  match = (share @ signature.T) / np.maximum(degree, 1.0)  # [2R, E]
  return np.where(degree > 0, match, 1.0).astype(np.float32)


def functionality(kg: kg_lib.KnowledgeGraph) -> np.ndarray:
  """`[2R]` float32: AMIE's functionality of each relation (inverses included) on train — its distinct
  heads over its facts; 0 for a relation with fewer than `FUNCTIONAL_MIN_FACTS` train facts."""
  triples = kg.with_inverses('train')
  num_rel = 2 * kg.num_relations
  facts = np.bincount(triples[:, 1], minlength=num_rel)
  heads = np.bincount(np.unique(triples[:, :2], axis=0)[:, 1], minlength=num_rel)
  return np.where(facts >= FUNCTIONAL_MIN_FACTS, heads / np.maximum(facts, 1), 0.0).astype(np.float32)


def _threshold(key: str, value: float) -> float:
  if not 0.0 < value <= 1.0:
    raise ValueError(f'ranking.priors: {key}={value}: expected a threshold in (0, 1]')
  return float(value)


@dataclasses.dataclass(frozen=True)
class AnswerType:
  """Entities of the query relation's answer type (`type_match >= min_match`) rank first."""
  min_match: float
  key: str = 'answer_type'

  def first(self, kg: kg_lib.KnowledgeGraph) -> np.ndarray:
    return type_match(kg) >= _threshold(self.key, self.min_match)


@dataclasses.dataclass(frozen=True)
class FunctionalInverse:
  """Entities that already have their one answer of a functional inverse relation rank last."""
  min_functionality: float
  key: str = 'functional_inverse'

  def first(self, kg: kg_lib.KnowledgeGraph) -> np.ndarray:
    num_rel = 2 * kg.num_relations
    triples = kg.with_inverses('train')
    has_fact = np.zeros((num_rel, kg.num_entities), bool)  # [2R, E]: e is a head of relation r
    has_fact[triples[:, 1], triples[:, 0]] = True
    inverse = kg.space.inverse_relation(np.arange(num_rel))  # [2R]
    functional = functionality(kg)[inverse] >= _threshold(self.key, self.min_functionality)
    return ~(functional[:, None] & has_fact[inverse])


PRIORS = {'answer_type': AnswerType, 'functional_inverse': FunctionalInverse}


def parse(names: Sequence[str]) -> list[Prior]:
  """`('answer_type=0.2', 'functional_inverse=0.95')` -> the priors (errors name the entry)."""
  if isinstance(names, str):
    names = (names,)
  out = []
  for name in names:
    key, sep, value = str(name).partition('=')
    if key not in PRIORS or not sep:
      raise ValueError(f'ranking.priors: {name!r} is not NAME=THRESHOLD with NAME one of '
                       f'{sorted(PRIORS)}, e.g. "answer_type=0.2"')
    try:
      out.append(PRIORS[key](float(value)))
    except ValueError:
      raise ValueError(f'ranking.priors: {name!r}: the threshold must be a number') from None
  return out


def typed_first(scores: np.ndarray, first: np.ndarray) -> np.ndarray:
  """`[b, E]` scores shifted so that every finite score with `first` beats every other one, each
  group keeping its order (a per-row shift of the other group: no precision is lost)."""
  scores = np.asarray(scores, np.float32)
  finite = np.isfinite(scores)
  lowest_first = np.min(np.where(first & finite, scores, np.inf), axis=-1, keepdims=True)
  highest_other = np.max(np.where(~first & finite, scores, -np.inf), axis=-1, keepdims=True)
  # [b, 1]; 0 when a group is empty (its bound is infinite)
  shift = np.maximum(highest_other - lowest_first + np.float32(1.0), np.float32(0.0))
  return np.where(first, scores, scores - shift).astype(np.float32)


@dataclasses.dataclass
class Priors:
  """The priors of one run over one graph: `[2R, E]` tables computed once."""
  names: tuple[str, ...]
  table: np.ndarray | None  # [2R, E] bool (AND of every prior), None: no prior

  @classmethod
  def from_names(cls, kg: kg_lib.KnowledgeGraph, names: Sequence[str]) -> 'Priors':
    parsed = parse(names)
    tables = [p.first(kg) for p in parsed]
    return cls(names=tuple(str(n) for n in (names if not isinstance(names, str) else (names,))),
               table=np.logical_and.reduce(tables) if tables else None)

  def apply(self, scores: np.ndarray, relations: np.ndarray) -> np.ndarray:
    """Scores `[b, E]` of queries with relations `[b]`, reordered by the priors."""
    if self.table is None:
      return np.asarray(scores)
    return typed_first(scores, self.table[relations])
