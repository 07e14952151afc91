"""`python -m dreamerv2_tf.parity authors FIXTURE_DIR [--json]`: numerical identity with the
authors' release (issue 8).

A fixture folder (made by ../shared/parity_fixtures/make_fixture.py with the authors' own code)
holds `variables.pkl` + `config.yaml` (an authors' checkpoint), `inputs.npz` (a replay batch
B×T and λ-return test arrays) and `outputs.npz` (every deterministic output of the authors'
components on them; the fixture's README.md says how each was computed). This command imports the
checkpoint with `import_authors.load_authors`, recomputes every array of `outputs.npz` with THIS
project's components (encoder, RSSM, heads, actor, critic, KL balancing, losses, λ-return,
imagination with the actor's mode), and reports for each array its relative error

    rel_err = max_i |ours_i − ref_i| / max_i |ref_i|

(the largest difference relative to the array's scale, its largest magnitude; 1 replaces the
scale for an all-zero array; for scalars this is the plain relative error). An element-wise
relative error is not used because arrays such as the KL per step, its gradients or the decoder
mean have entries near zero whose float32 rounding (a few 1e-8 absolute) would dominate.
It passes when every error is at most 1e-5 (float32 computations in a different
order, e.g. Keras 3 against Keras 2 convolutions, differ by a few ulps). The `train_metrics.*`
scalars come from one sampled training step of the authors' agent; they are printed with this
project's one-step values for information only and never decide the result.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Mapping

import numpy as np

from dreamerv2_tf.parity.scores import ParityError

TOLERANCE = 1e-5
TRAIN_PREFIX = 'train_metrics.'
BATCH_KEYS = ('image', 'action', 'reward', 'is_first', 'is_last', 'is_terminal')
IMAG_HORIZON = 3  # the fixtures' horizon for the deterministic imagination


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
  """max |ours − ref| / max |ref| (see the module docstring); inf for non-finite values.

  Raises:
    ParityError: different shapes (names both).
  """
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise ParityError(f'shape {list(ours.shape)} here, {list(ref.shape)} in the fixture')
  if ref.size == 0:
    return 0.0
  if not (np.all(np.isfinite(ours)) and np.all(np.isfinite(ref))):
    # Non-finite entries (e.g. NaN for variables no optimiser updates) must be the same
    # values at the same places; the finite ones are compared as usual.
    same = np.isfinite(ours) == np.isfinite(ref)
    if not (np.all(same) and np.array_equal(ours[~np.isfinite(ref)], ref[~np.isfinite(ref)],
                                            equal_nan=True)):
      return float('inf')
    finite = np.isfinite(ref)
    ours, ref = ours[finite], ref[finite]
    if ref.size == 0:
      return 0.0
  scale = float(np.max(np.abs(ref))) or 1.0
  return float(np.max(np.abs(ours - ref)) / scale)


def recompute(imported, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every deterministic fixture array, computed with this project's components.

  Args:
    imported: `import_authors.Imported` (the fixture's checkpoint in this project's Agent).
    inputs: the fixture's inputs.npz arrays.
  Returns:
    {array name: float32 numpy array}, the names of outputs.npz (without train_metrics.*);
    continuous-action fixtures get actor_loc/scale/mean/stddev instead of actor_logits/probs,
    fixtures without a discount head no discount_* arrays; Gaussian-latent fixtures have
    mean/std where categorical ones have logit (post_mean, kl_loss_grad_prior_std, imag_std, ...).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf.actor_critic import lambda_return  # pylint: disable=import-outside-toplevel

  agent = imported.agent
  config = imported.translation.config
  wm, ac, rssm = agent.wm, agent.ac, agent.wm.rssm
  out = {}
  data = {k: tf.constant(inputs[k]) for k in BATCH_KEYS}
  batch, length = inputs['reward'].shape

  pre = wm.preprocess(data)
  out['preprocessed_image'] = pre['image']
  out['preprocessed_reward'] = pre['reward']
  out['preprocessed_discount'] = pre['discount']
  embed = wm.encoder(pre['image'])
  out['embed'] = embed

  # Posterior rollout with the mode of the latents, step by step as RSSM.observe does.
  state = rssm.initial(batch)
  posts, priors = [], []
  for t in range(length):
    post, prior = rssm.obs_step(state, pre['action'][:, t], embed[:, t], pre['is_first'][:, t],
                                sample=False)
    posts.append(post)
    priors.append(prior)
    state = post
  post = {k: tf.stack([p[k] for p in posts], 1) for k in posts[0]}
  prior = {k: tf.stack([p[k] for p in priors], 1) for k in priors[0]}
  latent_keys = (*rssm.stats_keys, 'stoch', 'deter')
  for name, value in (('post', post), ('prior', prior)):
    for key in latent_keys:
      out[f'{name}_{key}'] = value[key]
  feat = rssm.get_feat(post)
  out['feat'] = feat

  out['decoder_mean'] = wm.head_dist('decoder', feat).mean()
  out['reward_mode'] = wm.head_dist('reward', feat).mode()
  if 'discount' in wm.heads:
    disc = wm.head_dist('discount', feat)
    out['discount_mean'] = disc.mean()
    out['discount_logits'] = disc.distribution.logits
  policy = ac.policy(feat)
  if agent.discrete:
    out['actor_logits'] = policy.logits_parameter()
    out['actor_probs'] = policy.probs_parameter()
  else:
    out['actor_loc'] = policy.distribution.loc
    out['actor_scale'] = policy.distribution.scale
    out['actor_mean'] = policy.mean()
    out['actor_stddev'] = policy.stddev()
  out['actor_mode'] = policy.mode()
  out['actor_entropy'] = policy.entropy()
  out['actor_log_prob_action'] = policy.log_prob(pre['action'])
  out['critic_mode'] = ac.value(feat)
  out['target_critic_mode'] = ac.value(feat, target=True)

  kl = dict(config.kl)
  kl_loss, kl_value = rssm.kl_loss(post, prior, **kl)
  out['kl_loss'] = kl_loss
  out['kl_value'] = kl_value
  post_w = {k: tf.identity(v) for k, v in post.items()}
  prior_w = {k: tf.identity(v) for k, v in prior.items()}
  watched = {f'{side}_{key}': state[key] for side, state in (('post', post_w), ('prior', prior_w))
             for key in rssm.stats_keys}
  with tf.GradientTape() as tape:
    tape.watch(list(watched.values()))
    kl_loss_w, _ = rssm.kl_loss(post_w, prior_w, **kl)
  grads = tape.gradient(kl_loss_w, list(watched.values()))
  out.update({f'kl_loss_grad_{name}': grad for name, grad in zip(watched, grads)})
  losses = {'kl': kl_loss}
  for name in wm.heads:
    key = 'image' if name == 'decoder' else name
    like = tf.cast(wm.head_dist(name, feat).log_prob(pre[key]), tf.float32)
    out[f'like_{key}'] = like
    losses[key] = -tf.reduce_mean(like)
  for key, loss in losses.items():
    out[f'loss_{key}'] = loss
  out['model_loss'] = sum(wm.loss_scales.get(k, 1.0) * v for k, v in losses.items())
  out['model_kl'] = tf.reduce_mean(kl_value)
  out['prior_ent'] = tf.reduce_mean(rssm.get_dist(prior).entropy())
  out['post_ent'] = tf.reduce_mean(rssm.get_dist(post).entropy())

  lam = float(config.discount_lambda)
  out['lambda_return'] = lambda_return(
      tf.constant(inputs['lambda_reward']), tf.constant(inputs['lambda_value']),
      tf.constant(inputs['lambda_discount']), tf.constant(inputs['lambda_bootstrap']), lam, 0)
  out['lambda_return_axis1_nobootstrap'] = lambda_return(
      tf.constant(inputs['lambda_reward'].T), tf.constant(inputs['lambda_value'].T),
      tf.constant(inputs['lambda_discount'].T), None, lam, 1)

  seq = wm.imagine(ac.policy, post, data['is_terminal'], IMAG_HORIZON, sample=False,
                   action_sample=False)
  for key in (*latent_keys, 'feat', 'action', 'discount', 'weight'):
    out[f'imag_{key}'] = seq[key]
  seq['reward'] = wm.head_dist('reward', seq['feat']).mode()
  out['imag_reward'] = seq['reward']
  mag = ac.reward_norm.mag.numpy()
  out['imag_reward_normed'], _ = ac.reward_norm(seq['reward'])
  seq['reward'] = out['imag_reward_normed']
  ac.reward_norm.mag.assign(mag)  # the fixture's forward values leave the weights unchanged
  out['imag_value'] = ac.value(seq['feat'], target=True)
  target, _ = ac.target(seq)
  out['imag_target'] = target
  actor_loss, mets = ac.actor_loss(seq, target, imported.step)
  out['actor_loss'] = actor_loss
  out['actor_ent_mean'] = mets['actor_ent']
  critic_loss, mets = ac.critic_loss(seq, target)
  out['critic_loss'] = critic_loss
  out['critic_mode_mean'] = mets['critic']
  if agent.expl is not None:  # the explorer's reward on the same imagined trajectory
    norms = [getattr(agent.expl, n) for n in ('intr_norm', 'extr_norm') if hasattr(agent.expl, n)]
    mags = [n.mag.numpy() for n in norms]
    out['expl_intr_reward'] = agent.expl.reward(wm, seq)
    for norm, value in zip(norms, mags):
      norm.mag.assign(value)
  return {k: np.asarray(v.numpy() if hasattr(v, 'numpy') else v, np.float32)
          for k, v in out.items()}


def train_metrics(imported, inputs: Mapping[str, np.ndarray]) -> dict[str, float]:
  """This project's metrics of one `agent.train` call on the fixture batch (sampled; changes the
  agent's variables, so call it last)."""
  metrics = imported.agent.train({k: inputs[k] for k in BATCH_KEYS})
  return {k: float(np.asarray(v)) for k, v in metrics.items()}


def check_fixture(folder: str | pathlib.Path, with_train: bool = True) -> dict:
  """Imports a fixture folder and compares every array of its outputs.npz.

  Disables TensorFloat-32 execution for the rest of the process (see the comment below).

  Returns:
    {'errors': {name: relative error}, 'max_rel_error': float, 'passed': bool,
     'worst': name, 'train_metrics': {name: (fixture value, this project's value)}}.
  Raises:
    ParityError: a missing file, an import error, or an array of outputs.npz that this command
      does not know how to recompute (names it).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf import import_authors  # pylint: disable=import-outside-toplevel
  folder = pathlib.Path(folder)
  # The reference is float32; TF computes float32 matmuls and convolutions in TensorFloat-32
  # (10-bit mantissa) on Ampere and newer GPUs unless told otherwise. No effect on CPUs.
  tf.config.experimental.enable_tensor_float_32_execution(False)
  if not folder.is_dir():
    raise ParityError(f'fixture folder {folder} {"is not a folder" if folder.exists() else "does not exist"}'
                      '; give a folder made by make_fixture.py (the repository\'s tests/fixtures/ '
                      'holds them, e.g. tests/fixtures/discrete_seed0, update_gaussian_seed5).')
  missing = [name for name in ('variables.pkl', 'config.yaml', 'inputs.npz', 'outputs.npz')
             if not (folder / name).exists()]
  if missing:
    raise ParityError(f'{folder} lacks {", ".join(missing)}; a fixture folder holds '
                      'variables.pkl, config.yaml, inputs.npz and outputs.npz (make_fixture.py).')
  task = None
  meta_path = folder / 'variables.json'
  json_path = meta_path if meta_path.exists() else None
  try:
    imported = import_authors.load_authors(folder / 'variables.pkl', folder / 'config.yaml',
                                           task, variables_json=json_path)
  except import_authors.AuthorsImportError as e:
    raise ParityError(str(e)) from None
  with np.load(folder / 'inputs.npz') as f:
    inputs = dict(f)
  with np.load(folder / 'outputs.npz') as f:
    reference = dict(f)
  ours = recompute(imported, inputs)
  errors = {}
  for name, ref in reference.items():
    if name.startswith(TRAIN_PREFIX):
      continue
    if name not in ours:
      raise ParityError(f'outputs.npz holds {name!r}, which this command does not recompute.')
    try:
      errors[name] = relative_error(ours[name], ref)
    except ParityError as e:
      raise ParityError(f'{name}: {e}') from None
  train = {}
  fixture_train = {k[len(TRAIN_PREFIX):]: float(v) for k, v in reference.items()
                   if k.startswith(TRAIN_PREFIX)}
  if with_train and fixture_train:
    ours_train = train_metrics(imported, inputs)
    train = {k: (v, ours_train.get(k)) for k, v in sorted(fixture_train.items())}
  worst = max(errors, key=errors.get)
  return {'errors': errors, 'max_rel_error': errors[worst], 'worst': worst,
          'passed': errors[worst] <= TOLERANCE, 'train_metrics': train}


def add_authors(subparsers) -> None:
  """Registers `authors`."""
  p = subparsers.add_parser(
      'authors', help='numerical identity with the authors\' release on a fixture folder',
      description='Imports a fixture\'s authors\' checkpoint and config, recomputes every array '
      'of its outputs.npz with this project\'s components and prints the largest relative error '
      f'per array; exit status 1 when any exceeds {TOLERANCE:g}.')
  p.add_argument('fixture', metavar='FIXTURE_DIR',
                 help='folder with variables.pkl, config.yaml, inputs.npz, outputs.npz')
  p.add_argument('--json', action='store_true',
                 help='print one JSON object: {array: error, ..., max_rel_error, passed}')
  p.add_argument('--no_train', action='store_true',
                 help='skip the informative one-step train_metrics comparison (always skipped '
                 'with --json)')
  p.add_argument('--no_updates', action='store_true',
                 help='skip the whole-update comparison of a fixture with updates.npz')
  p.set_defaults(run=run_authors)


def run_authors(args: argparse.Namespace) -> int:
  """`authors`: prints the per-array errors; returns 0 when all are within tolerance, else 1.

  With an updates.npz in the folder, also replays the fixture's deterministic updates
  (`check_updates`) unless --no_updates; both checks must pass.
  """
  folder = pathlib.Path(args.fixture)
  has_updates = (folder / UPDATES_FILE).exists() and not args.no_updates
  if has_updates and not (folder / 'outputs.npz').exists():
    # An update-only fixture (forward outputs left out to keep it small).
    result = {'errors': {}, 'max_rel_error': 0.0, 'worst': '-', 'passed': True,
              'train_metrics': {}}
  else:
    result = check_fixture(args.fixture, with_train=not (args.no_train or args.json))
  errors = result['errors']
  updates = check_updates(args.fixture) if has_updates else None
  passed = result['passed'] and (updates is None or updates['passed'])
  if args.json:
    out = dict(errors)
    out['max_rel_error'] = result['max_rel_error']
    out['passed'] = passed
    if updates is not None:
      out['updates'] = {r[0]: r[1] for r in updates['rows']}
      out['updates_max_rel_error'] = updates['max_rel_error']
      out['updates_passed'] = updates['passed']
    print(json.dumps(out, indent=1))
  elif errors:
    print(f'Fixture {args.fixture}: {len(errors)} arrays recomputed with this project\'s '
          'components; relative error = max |ours - ref| / max |ref|.')
    width = max(len(k) for k in errors)
    for name, err in errors.items():
      flag = '' if err <= TOLERANCE else '   > tolerance'
      print(f'  {name:<{width}}  {err:.3e}{flag}')
    if result['train_metrics']:
      print('One sampled train step (informative only; not compared): fixture / this project')
      for name, (ref, ours) in result['train_metrics'].items():
        ours_text = 'n/a' if ours is None else f'{ours:.6g}'
        print(f'  {name:<{width}}  {ref:.6g} / {ours_text}')
    print(f'Largest relative error {result["max_rel_error"]:.3e} ({result["worst"]}); '
          f'tolerance {TOLERANCE:g}: {"PASSED" if result["passed"] else "FAILED"}.')
  if updates is not None and not args.json:
    print(format_updates(updates, args.fixture))
  return 0 if passed else 1


# ----------------------------------------------------------------------------- whole updates

UPDATES_FILE = 'updates.npz'
OPTIMIZERS = ('model', 'actor', 'critic')


def _our_variables(imported) -> dict[int, object]:
  """{authors' variable index: this project's variable holding it} (first target)."""
  from dreamerv2_tf import import_authors  # pylint: disable=import-outside-toplevel
  targets = import_authors.variable_targets(imported.agent, imported.step)
  return {e.index: targets[e.path][0] for e in imported.layout if targets[e.path]}


def _optimizers(agent) -> dict:
  return {'model': agent.wm.opt, 'actor': agent.ac.actor_opt, 'critic': agent.ac.critic_opt}


def _adam(opt):
  inner = opt.opt
  return getattr(inner, 'inner_optimizer', inner)


def _update_arrays(imported, metrics: Mapping, u: int, last: bool) -> dict[str, np.ndarray]:
  """This project's state after update u under the names of the fixture's updates.npz."""
  agent = imported.agent
  ours = {}
  var_of = _our_variables(imported)
  for index, var in var_of.items():
    ours[f'u{u}.var.{index:03d}'] = np.asarray(var.numpy())
  by_var = np.full([len(imported.layout)], np.nan, np.float32)
  for name, opt in _optimizers(agent).items():
    adam = _adam(opt)
    ours[f'u{u}.adam.{name}.iterations'] = np.asarray(int(adam.iterations.numpy()), np.int64)
    position = {id(v): k for k, v in enumerate(opt.variables_)}
    for index, var in var_of.items():
      if id(var) not in position:
        continue
      k = position[id(var)]
      by_var[index] = float(metrics[f'{name}_grad_norm_var/{k:03d}'])
      if last:
        slot = adam._get_variable_index(var)  # pylint: disable=protected-access
        ours[f'u{u}.adam.{name}.m.{index:03d}'] = adam._momentums[slot].numpy()  # pylint: disable=protected-access
        ours[f'u{u}.adam.{name}.v.{index:03d}'] = adam._velocities[slot].numpy()  # pylint: disable=protected-access
    ours[f'u{u}.grad_norm.{name}'] = np.float32(metrics[f'{name}_grad_norm'])
  for key, value in metrics.items():
    if key.startswith('model_grad_norm/'):
      ours[f'u{u}.grad_norm.model/{key.split("/", 1)[1]}'] = np.float32(value)
    if '_grad_norm_var/' not in key and '/' not in key:
      ours[f'u{u}.metric.{key}'] = np.float32(value)
  ours[f'u{u}.grad_norm_by_var'] = by_var
  return ours


def run_updates(folder: str | pathlib.Path) -> dict:
  """Replays the fixture's deterministic updates with this project's Agent and compares them.

  The fixture (README "Deterministic train updates") ran the authors' `Agent.train` N times on
  the inputs.npz batch from variables.pkl with fresh optimisers, every random draw replaced by
  its mode; this runs `Agent.train` N times with `deterministic_check: True` from the same
  import (config_updates.yaml) and compares, after each update u, every variable, the
  optimisers' iteration counts, every metric and the pre-clip gradient norms (per optimiser,
  per world-model module, per variable), and after the last update the Adam moments.

  Returns:
    {'errors': {updates.npz key: relative error}, 'delta_errors': {'u<u>.var.<i>': relative
     error of the weight change of update u, (ours_u − ref_{u−1}) against (ref_u − ref_{u−1})},
     'missing': [fixture keys not recomputed], 'extra_metrics': [our metrics the fixture lacks],
     'updates': N, 'paths': {index: authors' path}, 'arrays': {key: this project's array}}.
  Raises:
    ParityError: missing files or an import error.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from dreamerv2_tf import import_authors  # pylint: disable=import-outside-toplevel
  folder = pathlib.Path(folder)
  tf.config.experimental.enable_tensor_float_32_execution(False)
  config = folder / 'config_updates.yaml'
  for path in (folder / UPDATES_FILE, config, folder / 'variables.pkl', folder / 'inputs.npz'):
    if not path.exists():
      raise ParityError(f'{folder} has no {path.name}; an update fixture holds updates.npz, '
                        'config_updates.yaml, variables.pkl and inputs.npz (make_fixture.py '
                        '--updates N).')
  meta = folder / 'variables.json'
  try:
    imported = import_authors.load_authors(
        folder / 'variables.pkl', config, variables_json=meta if meta.exists() else None,
        overrides={'deterministic_check': True})
  except import_authors.AuthorsImportError as e:
    raise ParityError(str(e)) from None
  with np.load(folder / 'inputs.npz') as f:
    batch = {k: f[k] for k in BATCH_KEYS}
  with np.load(folder / UPDATES_FILE) as f:
    reference = dict(f)
  count = max(int(k.split('.')[0][1:]) for k in reference)
  ours, extra = {}, set()
  for u in range(1, count + 1):
    metrics = {k: v.numpy() for k, v in imported.agent.train(batch).items()}
    ours.update(_update_arrays(imported, metrics, u, u == count))
    extra |= {k for k in metrics if '/' not in k and f'u{u}.metric.{k}' not in reference}
  return _compare_updates(imported, reference, ours, count, sorted(extra))


def _compare_updates(imported, reference, ours, count, extra) -> dict:
  from dreamerv2_tf import import_authors  # pylint: disable=import-outside-toplevel
  arrays = import_authors.load_variables(imported.sources['variables'])
  errors, deltas, missing = {}, {}, []
  for key, ref in reference.items():
    if key not in ours:
      missing.append(key)
      continue
    errors[key] = relative_error(ours[key], ref)
    u, kind, rest = (key.split('.', 2) + ['', ''])[:3]
    if kind == 'var':
      step = int(u[1:])
      before = (arrays[int(rest)] if step == 1 else reference[f'u{step - 1}.var.{rest}'])
      before = np.asarray(before, np.float64)
      deltas[key] = relative_error(np.asarray(ours[key], np.float64) - before,
                                   np.asarray(ref, np.float64) - before)
  return {'errors': errors, 'delta_errors': deltas, 'missing': missing, 'extra_metrics': extra,
          'updates': count, 'paths': {e.index: e.path for e in imported.layout},
          'arrays': ours}


# Arrays that float32 arithmetic in another order cannot bring within TOLERANCE, with the bound
# that holds and why (measured on tests/fixtures/update_*: see README "Deterministic updates").
UPDATE_EXCEPTIONS = (
    ('metric.actor_loss', 1e-4,
     'a weighted mean of terms of both signs (|terms| ~0.1) that nearly cancel (|loss| ~1e-3): '
     'its absolute error ~2e-8 is float32 rounding of the terms'),
    ('adam.*.v', 3e-5,
     'Adam second moments are sums of squared gradients: twice the gradients\' relative error, '
     'which float32 sums in another order leave at up to ~7e-6 (decoder convolutions)'),
    ('var (bias/beta)', 1e-4,
     'zero-initialised arrays (biases, LayerNorm beta) hold nothing but Adam steps '
     'lr·m/(√v + ε), which amplify the gradients\' float32 differences where |g| ~ ε '
     '(measured up to 4.4e-5, the GRU bias of update_rewnorm_seed4)'),
    ('metric.expl_critic', 2e-4,
     'the explorer\'s mean critic value over the imagined states, terms of both signs '
     '(|v| ~0.1) that nearly cancel (|mean| 2.6e-4 after update 1 of '
     'update_plan2explore_seed7): its absolute error 2.6e-8 is float32 rounding of the terms'),
)


def update_tolerance(key: str, path: str = '') -> tuple[float, str]:
  """(tolerance, exception name or '') for an updates.npz key (path: the authors' variable)."""
  rest = key.split('.', 1)[1] if '.' in key else key
  if rest == 'metric.actor_loss':
    return UPDATE_EXCEPTIONS[0][1], UPDATE_EXCEPTIONS[0][0]
  if rest == 'metric.expl_critic':
    return UPDATE_EXCEPTIONS[3][1], UPDATE_EXCEPTIONS[3][0]
  if rest.startswith('adam.') and '.v.' in rest:
    return UPDATE_EXCEPTIONS[1][1], UPDATE_EXCEPTIONS[1][0]
  if rest.startswith('var.') and path.rsplit('/', 1)[-1] in ('bias', 'beta'):
    return UPDATE_EXCEPTIONS[2][1], UPDATE_EXCEPTIONS[2][0]
  return TOLERANCE, ''


def check_updates(folder: str | pathlib.Path) -> dict:
  """`run_updates` plus the verdict: every array within its `update_tolerance`.

  Returns:
    `run_updates`'s dict plus 'rows' [(array, max error over updates, worst update,
    tolerance, exception)], 'failed' [array names], 'passed' bool, 'max_rel_error' float.
  """
  result = run_updates(folder)
  rows = {}
  for key, err in result['errors'].items():
    u, name = key.split('.', 1)
    path = ''
    if name.startswith(('var.', 'adam.')) and name[-3:].isdigit():
      path = result['paths'].get(int(name[-3:]), '')
    tol, why = update_tolerance(key, path)
    label = f'{name} {path}'.strip()
    if label not in rows or err > rows[label][1]:
      rows[label] = (label, err, u, tol, why)
  rows = sorted(rows.values())
  failed = [r[0] for r in rows if not r[1] <= r[3]]
  if result['missing']:
    failed += [f'missing {k}' for k in result['missing']]
  result.update(rows=rows, failed=failed, passed=not failed,
                max_rel_error=max(r[1] for r in rows))
  return result


def format_updates(result: dict, folder) -> str:
  """The per-array report of `check_updates` (one line per array, worst over the updates)."""
  lines = [f'Fixture {folder}: {result["updates"]} deterministic updates (deterministic_check: '
           'true) replayed; per array the largest relative error over the updates.']
  width = max(len(r[0]) for r in result['rows'])
  groups = {}
  for label, err, u, tol, why in result['rows']:
    flag = '' if err <= tol else '   > tolerance'
    note = f'  (tolerance {tol:g}: {why})' if why else ''
    lines.append(f'  {label:<{width}}  {err:.3e} {u}{flag}{note}')
    group = label.split('.')[0]
    groups[group] = max(groups.get(group, 0.0), err)
  deltas = result['delta_errors']
  worst_delta = max(deltas, key=deltas.get)
  lines.append('Worst per group: ' + ', '.join(f'{g} {e:.2e}' for g, e in groups.items()))
  lines.append(f'Weight changes (ours_u - ref_u-1 against ref_u - ref_u-1; informative, limited '
               f'by the float32 spacing of the weights): worst {deltas[worst_delta]:.2e} '
               f'({worst_delta}).')
  for name, tol, why in UPDATE_EXCEPTIONS:
    lines.append(f'Exception {name}: tolerance {tol:g}; {why}.')
  if result['extra_metrics']:
    lines.append(f'Metrics the fixture lacks (not compared): {result["extra_metrics"]}')
  verdict = 'PASSED' if result['passed'] else f'FAILED ({", ".join(result["failed"][:5])})'
  lines.append(f'Updates: largest relative error {result["max_rel_error"]:.3e}: {verdict}.')
  return '\n'.join(lines)
