"""Re-makes this project's update fixtures (tests/fixtures/update_*) with the authors' code.

    VENV=$(../shared/peer/install.sh)      # the authors' release, PyPI dreamerv2 2.2.0
    .venv/bin/python scripts/make_fixtures.py --authors_python $VENV/bin/python [--only NAME]

Each fixture is made by ../shared/parity_fixtures/make_fixture.py (the shared generator, run in
the authors' environment; it imports their package and records what their own `Agent.train`
computes) with the options below, written to a temporary folder, then copied into
tests/fixtures/NAME without the files listed in `drop` (to keep the repository small: e.g. the
continuous fixture's forward outputs, already covered by tests/fixtures/continuous_seed1) and with
a provenance note prepended to its README.md. Where the generator cannot record a setting as it
stands, the fixture's `patch` lists text replacements (old, new, expected count) applied to a
temporary copy of it (StreamNorm's magnitude; Gaussian latents, GAUSSIAN_PATCH); the run stops if
the generator changed so that one no longer applies. Nothing of the authors' code is copied: only
the numbers their code produced.

Exit status 1 (and the generator's output) when a generator run fails.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
GENERATOR = REPO.parent / 'shared' / 'parity_fixtures' / 'make_fixture.py'

# Fixtures with an explorer: the shared generator knows only the task behaviour. These patches
# of its copy create the explorer's variables with forward passes (the Plan2Explore ensemble on
# features and action, ModelLoss's head, the explorer's actor and critics on features), record
# the explorer's reward on the forward imagined trajectory, and accept the explorer's three
# extra gradient calls (heads, actor, critic) per update; its metrics (expl_*) and variables
# after each update are then recorded like the task behaviour's. No Adam state of the
# explorer exists before the updates (--train-metrics 0), so they start fresh like the others.
EXPLORER_ARGS = ['--kind', 'discrete', '--updates', '2', '--reload-checks', '0',
                 '--train-metrics', '0']
EXPLORER_PATCH = [
    ("  beh._target_critic(feat)\n",
     "  beh._target_critic(feat)\n"
     "  explorer = agnt._expl_behavior\n"
     "  if explorer is not beh:\n"
     "    ens_in = feat\n"
     "    if agnt.config.disag_action_cond:\n"
     "      ens_in = tf.concat([feat, tf.cast(pre['action'][:, 0], feat.dtype)], -1)\n"
     "    for member in getattr(explorer, '_networks', []):\n"
     "      member(ens_in)\n"
     "    if hasattr(explorer, 'head'):\n"
     "      explorer.head(feat)\n"
     "    for net in (explorer.ac.actor, explorer.ac.critic, explorer.ac._target_critic):\n"
     "      net(feat)\n", 1),
    ("  out['critic_mode_mean'] = mets4['critic']\n",
     "  out['critic_mode_mean'] = mets4['critic']\n"
     "  if agnt._expl_behavior is not beh:\n"
     "    out['expl_intr_reward'] = agnt._expl_behavior._intr_reward(seq)\n", 1),
    ("      assert len(records) == 3, len(records)",
     "      assert len(records) in (3, 6), len(records)", 1)]
# The shared generator records categorical latents (state key `logit`) and patches only the
# one-hot and truncated-normal samplers. For Gaussian latents (`rssm.discrete: 0`, state keys
# mean/std) a copy of it (a) names the latent keys in one constant LAT and reads them where it
# reads `logit`, and (b) makes tfd.Normal's base draw (inside MultivariateNormalDiag.sample) its
# mode 0 under the deterministic switch, as it does for the other two samplers.
# Each entry: (old text, new text, how often old occurs).
GAUSSIAN_PATCH = [
    ("IMAG_HORIZON = 3\n",
     "IMAG_HORIZON = 3\nLAT = ('mean', 'std')  # Gaussian latents (scripts/make_fixtures.py)\n",
     1),
    ("('logit', 'stoch', 'deter'", "(*LAT, 'stoch', 'deter'", 3),
    ("""    tape.watch([post_w['logit'], prior_w['logit']])""",
     """    tape.watch([post_w[k] for k in LAT] + [prior_w[k] for k in LAT])""", 1),
    ("""  g_post, g_prior = tape.gradient(
      kl_loss_w, [post_w['logit'], prior_w['logit']])
  out['kl_loss_grad_post_logit'] = g_post
  out['kl_loss_grad_prior_logit'] = g_prior""",
     """  grads = tape.gradient(
      kl_loss_w, [post_w[k] for k in LAT] + [prior_w[k] for k in LAT])
  names = [f'kl_loss_grad_{side}_{k}' for side in ('post', 'prior') for k in LAT]
  out.update(zip(names, grads))""", 1),
    ("""      'post_logit': (outs['post']['logit'], out['post_logit']),""",
     """      **{f'{side}_{k}': (outs[side][k], out[f'{side}_{k}'])
         for side in ('post', 'prior') for k in LAT},""", 1),
    ("""      'prior_logit': (outs['prior']['logit'], out['prior_logit']),\n""", '', 1),
    ("""    tfd.TruncatedNormal._sample_n = mode_sampler(
        'TruncatedNormal._sample_n', tfd.TruncatedNormal)""",
     """    tfd.TruncatedNormal._sample_n = mode_sampler(
        'TruncatedNormal._sample_n', tfd.TruncatedNormal)
    # Gaussian latents: MultivariateNormalDiag.sample = mean + std * (base Normal draw).
    self.orig_samplers[tfd.Normal] = tfd.Normal.__dict__['_sample_n']
    calls['Normal._sample_n'] = 0
    tfd.Normal._sample_n = mode_sampler('Normal._sample_n', tfd.Normal)""", 1),
]

FIXTURES = {
    'update_continuous_seed1': dict(
        args=['--kind', 'continuous', '--seed', '1', '--actions', '3', '--updates', '3'],
        sizes={'rssm.deter': 16, 'rssm.hidden': 12, 'rssm.stoch': 3, 'rssm.discrete': 5,
               'encoder.cnn_depth': 2, 'decoder.cnn_depth': 2, 'actor.layers': 2,
               'actor.units': 12, 'critic.layers': 2, 'critic.units': 10,
               'reward_head.layers': 2, 'reward_head.units': 14},
        drop=['outputs.npz'],
        what='DMC-vision config, truncated-normal actor, dynamics gradients, free nats 1'),
    'update_klbalance05_seed2': dict(
        args=['--kind', 'discrete', '--seed', '2', '--updates', '2'],
        sizes={'kl.balance': 0.5, 'kl.free': 0.02, 'encoder.cnn_depth': 2,
               'decoder.cnn_depth': 2},
        drop=[],
        what='Atari config with kl.balance 0.5 (the paper\'s no-balancing ablation), free 0.02'),
    'update_layernorm_seed3': dict(
        args=['--kind', 'discrete', '--seed', '3', '--updates', '2', '--reload-checks', '0'],
        sizes={'encoder.norm': 'layer', 'decoder.norm': 'layer', 'reward_head.norm': 'layer',
               'discount_head.norm': 'layer', 'actor.norm': 'layer', 'critic.norm': 'layer',
               'encoder.cnn_depth': 2, 'decoder.cnn_depth': 2},
        drop=[],
        what='Atari config with norm: layer in encoder, decoder, heads, actor and critic'),
    'update_layernorm_wide_seed10': dict(
        args=['--kind', 'discrete', '--seed', '10', '--updates', '2', '--reload-checks', '0'],
        sizes={'encoder.norm': 'layer', 'decoder.norm': 'layer', 'reward_head.norm': 'layer',
               'discount_head.norm': 'layer', 'actor.norm': 'layer', 'critic.norm': 'layer',
               'encoder.cnn_depth': 8, 'decoder.cnn_depth': 8},
        drop=[],
        what='Atari config with norm: layer as update_layernorm_seed3, but encoder and decoder '
             'cnn_depth 8 (LayerNorm over 8-64 conv channels instead of 2-16)'),
    'update_rewnorm_seed4': dict(
        args=['--kind', 'discrete', '--seed', '4', '--updates', '2', '--reload-checks', '0'],
        sizes={'reward_norm.momentum': 0.9, 'reward_norm.scale': 2.0, 'encoder.cnn_depth': 2,
               'decoder.cnn_depth': 2},
        drop=[],
        # The generator asserts that its forward outputs change no variable, but StreamNorm with
        # momentum < 1 updates its magnitude when called: restore it after that one call.
        patch=[("""  seq['reward'], _ = beh.rewnorm(reward)
  out['imag_reward_normed'] = seq['reward']""", """  _mag_before = beh.rewnorm.mag.numpy()
  seq['reward'], _ = beh.rewnorm(reward)
  beh.rewnorm.mag.assign(_mag_before)  # forward outputs leave the weights unchanged
  out['imag_reward_normed'] = seq['reward']""", 1)],
        what='Atari config with reward_norm momentum 0.9, scale 2 (StreamNorm)'),
    'update_plan2explore_seed7': dict(
        args=EXPLORER_ARGS + ['--seed', '7'],
        sizes={'expl_behavior': 'Plan2Explore', 'disag_models': 3, 'expl_head.layers': 2,
               'expl_head.units': 12, 'encoder.cnn_depth': 2, 'decoder.cnn_depth': 2},
        drop=[],
        patch=EXPLORER_PATCH,
        what='Atari config with expl_behavior plan2explore (3 ensemble members, 2x12 heads)'),
    'update_plan2explore_deter_seed9': dict(
        args=EXPLORER_ARGS + ['--seed', '9'],
        sizes={'expl_behavior': 'Plan2Explore', 'disag_models': 4, 'disag_target': 'deter',
               'disag_log': True, 'disag_action_cond': False, 'disag_offset': 2,
               'expl_intr_scale': 2.0, 'expl_extr_scale': 0.5, 'expl_head.layers': 1,
               'expl_head.units': 10, 'encoder.cnn_depth': 2, 'decoder.cnn_depth': 2},
        drop=[],
        patch=EXPLORER_PATCH,
        what='Atari config with plan2explore predicting deter 2 steps ahead without the action, '
             'log disagreement, intrinsic scale 2 plus extrinsic 0.5'),
    'update_modelloss_seed8': dict(
        args=EXPLORER_ARGS + ['--seed', '8'],
        sizes={'expl_behavior': 'ModelLoss', 'expl_intr_scale': 2.0, 'expl_extr_scale': 0.5,
               'expl_head.layers': 2, 'expl_head.units': 12, 'encoder.cnn_depth': 2,
               'decoder.cnn_depth': 2},
        drop=[],
        patch=EXPLORER_PATCH,
        what='Atari config with expl_behavior model_loss (a head predicts the KL), intrinsic '
             'scale 2 plus extrinsic 0.5'),
    'update_gaussian_seed5': dict(
        args=['--kind', 'discrete', '--seed', '5', '--updates', '2', '--reload-checks', '0'],
        sizes={'rssm.discrete': 0, 'rssm.stoch': 6, 'encoder.cnn_depth': 2,
               'decoder.cnn_depth': 2},
        drop=[],
        patch=GAUSSIAN_PATCH,
        what=('Atari config with Gaussian latents (rssm.discrete 0, stoch 6, std_act sigmoid2, '
              'min_std 0.1); generated by a patched copy of the generator (see GAUSSIAN_PATCH '
              'in scripts/make_fixtures.py): under the deterministic switch the base draw of '
              'tfd.Normal is its mode 0, so the latent draw is mean + std * 0 (the mean, '
              'd/d mean = 1, d/d std = 0), and the forward outputs record the state keys '
              'mean/std (post_mean, kl_loss_grad_post_std, imag_std, ...) instead of logit. '
              'Where the generator\'s README prose below speaks of logits and one-hot latents, '
              'read mean/std and the Gaussian mean')),
    'update_rssmnorm_seed6': dict(
        args=['--kind', 'discrete', '--seed', '6', '--updates', '2', '--reload-checks', '0'],
        sizes={'rssm.norm': 'layer', 'encoder.cnn_depth': 2, 'decoder.cnn_depth': 2},
        drop=[],
        what='Atari config with rssm.norm: layer (LayerNorm on img_in, img_out, obs_out)'),
}

NOTE = """<!-- Provenance (added by this project, scripts/make_fixtures.py): made by
../shared/parity_fixtures/make_fixture.py with the authors' DreamerV2 release (PyPI dreamerv2
2.2.0, MIT License) as `{command}`; {what}. Files left out: {drop}. No code of theirs is
included, only numbers their code produced. Checked by tests/test_update_parity.py and
`python -m dreamerv2_tf.parity authors tests/fixtures/{name}`. -->

"""


def make(name: str, spec: dict, python: str) -> None:
  """Runs the generator for one fixture and installs it under tests/fixtures/NAME."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / name
    generator = GENERATOR
    if spec.get('patch'):  # a patched copy of the shared generator, in the temporary folder
      text = GENERATOR.read_text()
      for old, new, count in spec['patch']:
        if text.count(old) != count:
          raise SystemExit(f'make_fixtures: error: {GENERATOR} changed; the patch for {name} '
                           f'no longer applies ({old.strip()[:60]!r}).')
        text = text.replace(old, new)
      generator = pathlib.Path(tmp) / GENERATOR.name
      generator.write_text(text)
    command = [python, str(generator), *spec['args'], '--sizes', json.dumps(spec['sizes']),
               '--out', str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
      sys.stdout.write(done.stdout[-4000:] + done.stderr[-4000:])
      raise SystemExit(f'make_fixtures: error: the generator failed for {name}.')
    dest = REPO / 'tests' / 'fixtures' / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for path in sorted(out.iterdir()):
      if path.name in spec['drop']:
        continue
      if path.name == 'README.md':
        shown = ' '.join(['make_fixture.py', *spec['args'], '--sizes',
                          f"'{json.dumps(spec['sizes'])}'"])
        note = NOTE.format(command=shown, what=spec['what'], name=name,
                           drop=', '.join(spec['drop']) or 'none')
        (dest / 'README.md').write_text(note + path.read_text())
      else:
        shutil.copyfile(path, dest / path.name)
    print(f'{dest}: {sum(p.stat().st_size for p in dest.iterdir()) / 1e6:.2f} MB')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--authors_python', required=True,
                      help='python of the authors\' environment (../shared/peer/install.sh)')
  parser.add_argument('--only', choices=sorted(FIXTURES), default=None)
  args = parser.parse_args()
  for name, spec in FIXTURES.items():
    if args.only in (None, name):
      make(name, spec, args.authors_python)


if __name__ == '__main__':
  main()
