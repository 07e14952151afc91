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
    return 0.0 if np.array_equal(ours, ref, equal_nan=True) else float('inf')
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
    fixtures without a discount head no discount_* arrays.
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
  for name, value in (('post', post), ('prior', prior)):
    for key in ('logit', 'stoch', 'deter'):
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
  with tf.GradientTape() as tape:
    tape.watch([post_w['logit'], prior_w['logit']])
    kl_loss_w, _ = rssm.kl_loss(post_w, prior_w, **kl)
  grads = tape.gradient(kl_loss_w, [post_w['logit'], prior_w['logit']])
  out['kl_loss_grad_post_logit'], out['kl_loss_grad_prior_logit'] = grads
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
  for key in ('logit', 'stoch', 'deter', 'feat', 'action', 'discount', 'weight'):
    out[f'imag_{key}'] = seq[key]
  seq['reward'] = wm.head_dist('reward', seq['feat']).mode()
  out['imag_reward'] = seq['reward']
  out['imag_reward_normed'] = seq['reward']  # reward_norm momentum 1: the identity
  out['imag_value'] = ac.value(seq['feat'], target=True)
  target, _ = ac.target(seq)
  out['imag_target'] = target
  actor_loss, mets = ac.actor_loss(seq, target, imported.step)
  out['actor_loss'] = actor_loss
  out['actor_ent_mean'] = mets['actor_ent']
  critic_loss, mets = ac.critic_loss(seq, target)
  out['critic_loss'] = critic_loss
  out['critic_mode_mean'] = mets['critic']
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
  for name in ('variables.pkl', 'config.yaml', 'inputs.npz', 'outputs.npz'):
    if not (folder / name).exists():
      raise ParityError(f'{folder} has no {name}; a fixture folder holds variables.pkl, '
                        'config.yaml, inputs.npz and outputs.npz (make_fixture.py).')
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
  p.set_defaults(run=run_authors)


def run_authors(args: argparse.Namespace) -> int:
  """`authors`: prints the per-array errors; returns 0 when all are within tolerance, else 1."""
  result = check_fixture(args.fixture, with_train=not (args.no_train or args.json))
  errors = result['errors']
  if args.json:
    out = dict(errors)
    out['max_rel_error'] = result['max_rel_error']
    out['passed'] = result['passed']
    print(json.dumps(out, indent=1))
  else:
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
  return 0 if result['passed'] else 1
