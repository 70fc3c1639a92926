"""Default configuration: every key the project reads, with a comment above each.

Dataset files (`synthetic.py`, `openbg.py`, `structure.py`) start from this one and override what
differs. Override any key from the command line:
`python launch.py --config=configs/synthetic.py --config.train.num_steps=500 --workdir=W`.
`get_config('smoke')` (`--config=configs/default.py:smoke`, and `:smoke` of every dataset file)
shrinks everything to a run of seconds, as big_vision's `runlocal`: the tests use it.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The defaults; `arg='smoke'` shrinks them (`smoke`)."""
  config = _defaults()
  return smoke(config) if arg == 'smoke' else config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `config` in place to a run of seconds (tiny model, few steps, small beam); returns it."""
  config.synthetic.num_products = 40
  config.synthetic.num_imageless_products = 40
  config.synthetic.num_brands = 6
  config.synthetic.num_shops = 6
  config.synthetic.num_regions = 3
  config.synthetic.num_couriers = 2
  config.synthetic.image_size = 64
  config.features.vgg_image_size = 32
  config.features.vgg_layer = 'gap'
  config.features.ae_steps = 20
  config.rules.num_walks = 2000
  config.rules.paths_per_triple = 2
  config.trajectories.num_shards = 2
  config.model.emb_dim = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.train.batch_size = 16
  config.train.direct_batch_size = 16
  config.train.num_steps = 6
  config.train.log_every = 3
  config.train.checkpoint_every = 3
  config.train.shuffle_buffer = 64
  config.optim.warmup_steps = 2
  config.decode.beam_size = 8
  config.decode.batch_size = 8
  config.decode.finish_width = 16
  config.decode.max_queries = 6
  config.train.select_queries = 6
  return config


def _defaults() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Global seed: data generation, sampling, initialisation and training all derive from it.
  config.seed = 0

  # ---------------------------------------------------------------- data (imkga_jax/kg.py)
  config.data = ml_collections.ConfigDict()
  # Folder of the raw KG. Empty with `data.synthetic=True` means WORKDIR/raw (generated). When set,
  # it wins over data.name (read as it is; the name only labels the run).
  config.data.root = ''
  # A dataset by name (imkga_jax/datasets.py): 'umls', 'kinship' (shipped in the package),
  # 'wn18rr', 'fb15k237', 'openbg_img' (in the cache folder, downloaded on first use where a network
  # exists, sha256-verified). '' = none: data.root or data.synthetic says what to read.
  config.data.name = ''
  # Cache folder of the downloaded datasets ('' = $IMKGA_DATASETS_DIR, else
  # $XDG_CACHE_HOME/imkga_jax/datasets, else ~/.cache/imkga_jax/datasets); each in <cache>/<name>.
  config.data.cache_dir = ''
  # Archive to download data.name from instead of its recorded URL ('' = the recorded one): a
  # mirror, or a local copy as file:///path/WN18RR.tar.gz (.tar, .tar.gz, .tgz or .zip).
  config.data.url = ''
  # 'auto' (detect), 'triples' (train/valid/test .txt/.tsv) or 'openbg' (OpenBG-IMG layout).
  config.data.layout = 'auto'
  # Generate the embedded multimodal KG (data_prep/synthetic.py) into WORKDIR/raw first.
  config.data.synthetic = False
  # What to do with a valid/test triple whose entity or relation never occurs in train:
  # 'error' (stop, naming file and line), 'skip' (drop it, count it, log the count) or 'keep'
  # (keep it and add the unseen names to the vocabulary, counted and logged; WN18RR needs this).
  config.data.unknown_entities = 'error'
  # Repeated triples (a train triple twice, a valid/test triple twice in its split, a valid/test
  # triple that is also a train triple): 'keep' (use the splits as published; counted, logged and
  # written to stats.json), 'drop' (remove the later copy and the valid/test copy of a train triple,
  # counted) or 'error' (stop, naming both lines).
  config.data.duplicates = 'keep'
  # Input files reached through a symlink whose target leaves data.root: 'error' (stop, naming the
  # link), 'skip' (leave such images out, counted and logged) or 'follow' (read them, counted; the
  # folders data_prep/variants.py writes link their images to the source KG).
  config.data.outside_links = 'error'

  # ---------------------------------------------------------------- synthetic KG generator
  config.synthetic = ml_collections.ConfigDict()
  # Number of products (each gets one rendered image).
  config.synthetic.num_products = 1000
  # Number of brands, shops and regions (the other entity kinds have fixed vocabularies).
  config.synthetic.num_brands = 60
  config.synthetic.num_shops = 80
  config.synthetic.num_regions = 12
  # Image side in pixels (VGG16 reads 224x224).
  config.synthetic.image_size = 224
  # Further products without an image (only some heads have images, as in OpenBG-IMG).
  config.synthetic.num_imageless_products = 1700
  # Number of couriers (each region is served by one; ships_via has 2- and 3-hop rules).
  config.synthetic.num_couriers = 5
  # Share of image products with one image-only fact (brand/colour/category) in valid, and in test.
  config.synthetic.image_only_fraction = 0.15

  # ---------------------------------------------------------------- entity features (issue 3)
  config.features = ml_collections.ConfigDict()
  # Build features.npz / h_fig / h_ocr. Off for structure-only datasets and the no_img variant.
  config.features.enabled = True
  # VGG16 output used as the raw image vector: 'predictions' (1000), 'fc2' (4096) or 'gap' (512).
  config.features.vgg_layer = 'predictions'
  # VGG16 weights: 'random' (seeded random init, warned: no ImageNet file can be downloaded here;
  # '' is read as 'random') or a local ImageNet file: Keras .h5 / .weights.h5, torchvision .pth or
  # .safetensors (README "VGG16 weights"). stats.json and the summary say which was used.
  config.features.vgg_weights = 'random'
  # Square side images are resized to for VGG16 (224 unless vgg_layer='gap', which takes any size;
  # 112 costs a quarter of the FLOPs).
  config.features.vgg_image_size = 224
  # Images per VGG16 batch.
  config.features.batch_size = 32
  # OCR engine: 'rapidocr' (default) or 'easyocr' (optional extra).
  config.features.ocr_engine = 'rapidocr'
  # Dimension of the hashed character n-gram vector of the OCR text.
  config.features.ocr_vector_dim = 256
  # Character n-gram orders hashed into the OCR vector (inclusive range).
  config.features.ngram_min = 1
  config.features.ngram_max = 3
  # Entities the OCR text of an image names (distinctive words of their names or entity texts,
  # data_prep/mentions.py), kept per entity: evidence for the direct answer whose weight per
  # relation the model learns (0 = off).
  config.features.max_mentions = 4
  # Reduced sizes (paper: h_fig 8, h_ocr 3).
  config.features.fig_dim = 8
  config.features.ocr_dim = 3
  # Autoencoder (Eq. 3-7) training: steps, learning rate, batch size.
  config.features.ae_steps = 2000
  config.features.ae_learning_rate = 1e-3
  config.features.ae_batch_size = 256
  # Eq. 3-7 attention block: segments the raw vector is cut into (must divide its size) and width.
  config.features.ae_segments = 8
  config.features.ae_hidden = 64
  # Drop OCR lines shorter than this many characters (lone glyphs are shapes read as letters).
  config.features.ocr_min_chars = 2
  # Largest image (width x height) decoded; a larger one is counted and logged as unreadable before
  # its pixels are decoded (Pillow's decompression-bomb limit is set to it). 40 MP is a 7300x5500
  # photo, ~120 MB decoded; VGG16 and OCR read 224x224 here.
  config.features.max_image_pixels = 40_000_000

  # ---------------------------------------------------------------- rules and paths (issue 4)
  config.rules = ml_collections.ConfigDict()
  # Longest rule body (1..3; at most trajectories.max_hops).
  config.rules.max_length = 3
  # Keep a rule when support >= min_support and confidence >= min_confidence.
  config.rules.min_support = 2
  config.rules.min_confidence = 0.1
  # Sampled start entities when scoring a body with sparse products (bounds the cost on hubs).
  config.rules.sample_rows = 5000
  # Graphs with at most this many entities are scored exactly with dense matmuls (E^2 per matrix).
  config.rules.dense_max_entities = 256
  # Random walks sampled per body length (2, 3) to propose rule bodies, spread evenly over heads.
  config.rules.num_walks = 200_000
  # Most sampled candidate bodies kept per head relation and length before scoring.
  config.rules.candidates_per_head = 200
  # Keep at most this many rules per head relation.
  config.rules.max_rules_per_head = 50
  # Distinct grounded paths per train triple (k).
  config.rules.paths_per_triple = 4
  # Instantiations kept per rule and triple (drawn at random among those that reach the tail).
  config.rules.paths_per_rule = 1
  # Neighbours followed per step when instantiating a body (a seeded sample beyond it).
  config.rules.grounding_fanout = 64

  # ---------------------------------------------------------------- trajectories (issue 4)
  config.trajectories = ml_collections.ConfigDict()
  # Longest path in hops; sequences have 2*max_hops+1 action tokens.
  config.trajectories.max_hops = 3
  # Random-walk trajectories that miss t (written with R1 = r_bad), per positive trajectory.
  config.trajectories.negative_share = 0.1
  # Queries that get the direct trajectory `t <eos>` beside their rule paths: 'all' (every query:
  # step 0 is then a classifier over every entity, CoKE-like, and what the model reads from the
  # head's image is learnt for every fact, with no rule deciding which), 'image_heads' (heads with
  # an image) or 'none' (the paper's reading: only the queries no rule grounds).
  config.trajectories.also_direct = 'all'
  # TFRecord shards written (>= number of processes that will read them).
  config.trajectories.num_shards = 8

  # ---------------------------------------------------------------- return-to-go (Eq. 8-12)
  config.rtg = ml_collections.ConfigDict()
  # R1 of a path that reaches the target (and R0).
  config.rtg.r_good = 1.0
  # R1 of a path that misses the target, and the penalty of an action of the wrong kind.
  config.rtg.r_bad = -1.0
  # Base reward of every action (negative: fewer hops are better).
  config.rtg.r_step = -0.1
  # Image similarity used when the action's or the target's image is missing (Eq. 11: 1/2 R1).
  config.rtg.missing_similarity = 0.5
  # Probability that training replaces the true image similarity by the missing-target value
  # (applied per example by the input pipeline, which reads both return-to-go versions).
  config.rtg.target_dropout = 0.5

  # ---------------------------------------------------------------- model (issue 5)
  config.model = ml_collections.ConfigDict()
  # Table 3 variant: 'no_img', 'mkg', 'rl' or 'mkg_rl'.
  config.model.variant = 'mkg_rl'
  config.model.emb_dim = 256
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_dim = 1024
  # Dropout on the token sequence (model.embed_dropout), after attention and feed-forward, and on
  # the attention weights.
  config.model.dropout_rate = 0.1
  # Feed the state projection (Eq. 15) the elementwise product LN(emb(h)) ⊙ LN(emb(r)) beside
  # emb(h) and emb(r): the query's multiplicative interaction, which a sum cannot form.
  config.model.query_product = False
  # Initial std of the token embedding (0: 1/sqrt(emb_dim), flax's nn.Embed default) and of the
  # learned ∅ feature vectors; which tokens dropout also hits before the encoder ('all',
  # 'except_first', 'actions', 'none'). With 0 / 0.02 / 'none' the synthetic KG's step-0 classifier
  # trained alone leaves the relation prior (valid 0.068 -> 0.410), but in full runs its paths
  # overfit (whole valid 0.727 -> 0.682; 'none' alone 0.719): opt-in knobs (benchmarks/RESULTS.md,
  # fourth 2026-12-07 reading).
  config.model.embed_std = 0.02
  config.model.null_std = 1.0
  config.model.embed_dropout = 'all'
  # Computation dtype ('float32' or 'bfloat16'); parameters stay float32.
  config.model.dtype = 'float32'

  # ---------------------------------------------------------------- masks (Eq. 20)
  config.masks = ml_collections.ConfigDict()
  # Mask II: share of sequences with token dropout, and per-token probability inside them.
  config.masks.p_k = 0.5
  config.masks.p_m = 0.1
  # Mask III: probability that a history action token becomes <mask>.
  config.masks.p_3 = 0.1

  # ---------------------------------------------------------------- loss (Eq. 23-25)
  config.loss = ml_collections.ConfigDict()
  # Weight of the TRUE token (paper's best 0.7).
  config.loss.label_smoothing = 0.7
  # Weight of L_concat on Mask III sequences.
  config.loss.beta = 1.5
  # Typed output head: each step scores only the tokens of its kind (grammar.token_range, as the
  # decoder does) and the softmax and the smoothing cover what the path grammar allows after the
  # true history (losses.typed_token_loss). False: the whole vocabulary at every step.
  config.loss.typed_head = False

  # ---------------------------------------------------------------- optimiser (Eq. 26-28)
  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 200
  config.optim.weight_decay = 0.01
  config.optim.clip_norm = 1.0
  # Modulation strength alpha (paper's best 0.6; 0 turns damping off).
  config.optim.alpha = 0.6
  config.optim.noise_scale = 1.0
  # Active window of the modulation, in steps (end -1 = until the end).
  config.optim.modulation_start = 0
  config.optim.modulation_end = -1

  # ---------------------------------------------------------------- training (issue 7)
  config.train = ml_collections.ConfigDict()
  # Global batch size (trajectories per step, over all devices and processes).
  config.train.batch_size = 256
  config.train.num_steps = 5000
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  # Shuffle buffer of the tf.data pipeline.
  config.train.shuffle_buffer = 50_000
  # Optimisation steps per jitted call (a lax.scan over that many batches): XLA allocates the step's
  # buffers once per call, and the host dispatches and syncs less. 1 = one call per step.
  config.train.steps_per_call = 10
  # Direct trajectories `t <eos>` per step drawn as 2-step sequences beside the main batch (its
  # loss added to the main batch's): the step-0 classifier over every entity trains on short
  # sequences, and the main batch reads the other trajectories only. 0 = off: they are read in the
  # main batch, padded to 2*max_hops+1 steps.
  config.train.direct_batch_size = 256
  # Model selection on the valid split: every this many steps a seeded subset of valid is ranked as
  # evaluation ranks it (beam search, direct weight chosen) and the best parameters are kept for
  # evaluation (0 = off: the last checkpoint).
  config.train.eval_every = 500
  # ... on this many valid triples per direction (-1 = all).
  config.train.select_queries = 300
  # ... and training stops after this many measurements without a better one (0 = never).
  config.train.patience = 4

  # ---------------------------------------------------------------- mesh and sharding
  config.mesh = ml_collections.ConfigDict()
  # Mesh shape over ('data', 'model'); -1 takes the remaining devices.
  config.mesh.shape = (-1, 1)
  config.mesh.axes = ('data', 'model')
  # Logical axis name -> mesh axis (None = replicated). Parameters carry logical names
  # (imkga_jax/models); the batch dimension is 'batch'.
  config.mesh.rules = (
      ('batch', 'data'),
      ('vocab', 'model'),
      ('embed', None),
      ('mlp', 'model'),
      ('heads', 'model'),
      ('kv', None),
      ('branch', None),
      ('layers', None),
  )
  # Multi-process runs: jax.distributed.initialize(...) is called when num_processes > 1 or when
  # the environment names a coordinator (JAX_COORDINATOR_ADDRESS / cluster auto-detection).
  config.mesh.num_processes = 1
  # Coordinator 'host:port' and this process's id for explicit multi-process runs ('' / -1 = from
  # the environment: JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID, or cluster auto-detection).
  config.mesh.coordinator_address = ''
  config.mesh.process_id = -1

  # ---------------------------------------------------------------- decoding and evaluation
  config.decode = ml_collections.ConfigDict()
  # Live beams per query; memory per step grows with batch_size * beam_size * vocabulary.
  config.decode.beam_size = 64
  # Queries per jitted beam-search call.
  config.decode.batch_size = 32
  # Branch whose logits decode ('concat', 'fig' or 'ocr').
  config.decode.branch = 'concat'
  # Only emit valid moves in the TRAIN graph with inverses (imkga_jax/decode.py); the first action
  # may also be any entity (the direct `t <eos>` form, offered to the queries preparation trained it
  # for: prepared/format.json).
  config.decode.constrained = True
  # How an entity's finished paths make its score: 'max' (its best path) or 'sum' (log of the summed
  # probability of the paths reaching it), and whether a path's log-probability is divided by its
  # hops first. SQUIRE's rule is ('max', True).
  config.decode.aggregation = 'sum'
  config.decode.length_norm = False
  # Endings (a live prefix + an entity) finished at each inner entity step: the best `finish_width`
  # (one more model call on batch * finish_width rows), not only the beam's (<= beam_size = the
  # beam's own; imkga_jax/decode.py).
  config.decode.finish_width = 256
  # At the last entity step only <eos> can follow: finish every ending there (exact, no model call),
  # not only the beam's.
  config.decode.complete_last = True
  # Likewise after a step-0 entity: score every direct answer `t <eos>` exactly at step 0, outside
  # the beam (whose slots then all start paths); False lets them compete for the beam's slots.
  config.decode.complete_direct = True
  # How the direct answers and the paths make an entity's score (imkga_jax/decode.py `combine`):
  # 'model' (the aggregation over every path, the direct form included), a weight in [0, 1] of
  # the direct answers against the paths, each normalised (1 = the step-0 classifier alone), or
  # 'valid': the weight with the best MRR on the valid split (imkga_jax/evaluator.py).
  config.decode.direct_weight = 'valid'
  # Answers (with paths) kept per query in explanations.jsonl.
  config.decode.num_explanations = 10
  # Evaluate at most this many queries per split (-1 = all).
  config.decode.max_queries = -1
  # Splits --mode=eval evaluates, comma-separated.
  config.decode.splits = 'valid,test'

  # ---------------------------------------------------------------- ranking (imkga_jax/ranking.py)
  config.ranking = ml_collections.ConfigDict()
  # Opt-in ranking priors applied to every model alike, IMKGA-SM and the baselines
  # (imkga_jax/priors.py): 'answer_type=M', 'functional_inverse=F'. () = the standard protocol.
  config.ranking.priors = ()
  return config
