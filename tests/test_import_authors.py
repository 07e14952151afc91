"""Tests of the authors' checkpoint import and the `parity authors` check (issue 8).

Both fixtures live in the repository: tests/fixtures/discrete_seed0 (a copy of the project's
reference fixture, see its README for provenance) and tests/fixtures/continuous_seed1. Both were made with the authors' own code
(make_fixture.py); every array of their outputs.npz must be reproduced within 1e-5.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import pickle
import shutil

import numpy as np
import pytest
import ruamel.yaml

from dreamerv2_tf import import_authors as ia

REPO = pathlib.Path(__file__).resolve().parent.parent
DISCRETE = REPO / 'tests' / 'fixtures' / 'discrete_seed0'
CONTINUOUS = REPO / 'tests' / 'fixtures' / 'continuous_seed1'
FIXTURES = [pytest.param(DISCRETE, id='discrete_seed0'),
            pytest.param(CONTINUOUS, id='continuous_seed1')]
GAUSSIAN = REPO / 'tests' / 'fixtures' / 'update_gaussian_seed5'
RSSM_NORM = REPO / 'tests' / 'fixtures' / 'update_rssmnorm_seed6'
RSSM_FIXTURES = [pytest.param(GAUSSIAN, id='gaussian_seed5'),
                 pytest.param(RSSM_NORM, id='rssmnorm_seed6')]


def _need(folder: pathlib.Path) -> pathlib.Path:
  if not (folder / 'variables.pkl').exists():
    pytest.skip(f'fixture {folder} has no variables.pkl (a partial checkout? it is tracked in git)')
  return folder


def _authors_config(folder: pathlib.Path) -> dict:
  return ruamel.yaml.YAML(typ='safe', pure=True).load((folder / 'config.yaml').read_text())


def _write_config(path: pathlib.Path, data: dict) -> pathlib.Path:
  yaml = ruamel.yaml.YAML(typ='safe', pure=True)
  with path.open('w') as f:
    yaml.dump(data, f)
  return path


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize('folder', FIXTURES)
def test_fixture_reproduced_within_1e5(folder, capsys):
  """`python -m dreamerv2_tf.parity authors DIR --json`: every array within 1e-5, exit 0."""
  from dreamerv2_tf.parity.__main__ import main
  folder = _need(folder)
  status = main(['authors', str(folder), '--json'])
  result = json.loads(capsys.readouterr().out)
  with np.load(folder / 'outputs.npz') as f:
    names = [k for k in f.files if not k.startswith('train_metrics.')]
  errors = {k: v for k, v in result.items() if k not in ('max_rel_error', 'passed')}
  assert sorted(errors) == sorted(names)  # every deterministic array, nothing else
  bad = {k: v for k, v in errors.items() if not v <= 1e-5}
  assert not bad, bad
  assert result['passed'] is True and status == 0
  assert result['max_rel_error'] == max(errors.values())
  # The arrays issue 8 names are all there.
  for name in ('embed', 'post_deter', 'prior_logit', 'feat', 'decoder_mean', 'reward_mode',
               'actor_entropy', 'critic_mode', 'kl_value', 'kl_loss_grad_post_logit',
               'like_image', 'model_loss', 'lambda_return', 'imag_action', 'imag_target',
               'actor_loss', 'critic_loss'):
    assert name in errors


@pytest.mark.parametrize('folder', RSSM_FIXTURES)
def test_rssm_settings_reproduced_within_1e5(folder, capsys):
  """Gaussian latents (rssm.discrete: False in the authors' config) and rssm.norm: layer."""
  from dreamerv2_tf.parity.__main__ import main
  folder = _need(folder)
  status = main(['authors', str(folder), '--json', '--no_train'])
  result = json.loads(capsys.readouterr().out)
  assert result['passed'] is True and status == 0, result
  latent = 'mean' if folder == GAUSSIAN else 'logit'
  for name in (f'post_{latent}', f'prior_{latent}', 'feat', f'kl_loss_grad_post_{latent}',
               f'imag_{latent}', 'model_loss', 'actor_loss'):
    assert result[name] <= 1e-5


def test_relative_error_definition():
  from dreamerv2_tf.parity.authors import relative_error
  ref = np.array([0.0, 1e-9, 2.0, -4.0])
  ours = ref + np.array([0.0, 1e-6, 0.0, 4e-5])
  # max |diff| / max |ref| = 4e-5 / 4; the tiny entry's own relative error (1000) is ignored.
  assert relative_error(ours, ref) == pytest.approx(1e-5, rel=1e-9)
  assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
  assert relative_error(np.array([np.nan]), np.array([1.0])) == float('inf')


def test_parity_fails_on_a_wrong_array(tmp_path, capsys):
  """A fixture whose reference differs by 1e-4 somewhere fails with exit status 1."""
  from dreamerv2_tf.parity.__main__ import main
  folder = tmp_path / 'fixture'
  shutil.copytree(_need(CONTINUOUS), folder)
  with np.load(folder / 'outputs.npz') as f:
    outputs = dict(f)
  outputs['reward_mode'] = outputs['reward_mode'] * np.float32(1.0 + 1e-4)
  np.savez(folder / 'outputs.npz', **outputs)
  assert main(['authors', str(folder), '--json']) == 1
  result = json.loads(capsys.readouterr().out)
  assert result['passed'] is False
  assert result['reward_mode'] == pytest.approx(1e-4, rel=0.05)
  assert result['embed'] <= 1e-5


# ----------------------------------------------------------------------------- variable order

@pytest.mark.parametrize('folder', FIXTURES + RSSM_FIXTURES)
def test_order_derived_from_config_matches_variables_json(folder):
  """The order and shapes derived from config.yaml alone equal the fixture's variables.json."""
  folder = _need(folder)
  translation = ia.translate_config(_authors_config(folder))
  table = json.loads((folder / 'variables.json').read_text())['variables']
  actions = table[[r['path'] for r in table].index(ia.ACTOR_OUT_BIAS)]['shape'][0]
  layout = ia.authors_layout(translation.config, translation.image_shape, actions,
                             translation.discrete)
  assert [(v.path, list(v.shape), v.dtype) for v in layout] == \
      [(r['path'], r['shape'], r['dtype']) for r in table]


def test_layout_sorts_layer_names_as_strings():
  """dense10 comes between dense1 and dense2 (tf.Module sorts attribute/dict keys as strings)."""
  translation = ia.translate_config(_authors_config(_need(DISCRETE)))
  config = translation.config.update({'reward_head.layers': 11})
  paths = [v.path for v in ia.authors_layout(config, (64, 64, 1), 6, True)
           if v.path.startswith('wm/heads/reward/') and v.path.endswith('kernel')]
  names = [p.split('/')[4] for p in paths]
  assert names[:4] == ['dense0', 'dense1', 'dense10', 'dense2']
  assert names[-1] == 'out'


def test_without_slow_target_the_critic_comes_first():
  """slow_target False: the authors' _target_critic IS the critic, visited once under that name
  before the actor; the import fills both of this project's critics from it."""
  translation = ia.translate_config(_authors_config(_need(DISCRETE)))
  config = translation.config.update({'slow_target': False})
  paths = [v.path for v in ia.authors_layout(config, (64, 64, 1), 6, True)]
  assert paths[2].startswith('_task_behavior/_target_critic/')
  assert not any(p.startswith('_task_behavior/critic/') for p in paths)
  assert len(paths) == 65 - 6


# ----------------------------------------------------------------------------- safe unpickling

class _CreatesFile:
  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, 'w'))


def test_crafted_pickle_is_refused_without_running(tmp_path):
  target = tmp_path / 'created_by_pickle'
  payload = pickle.dumps((np.zeros(3, np.float32), _CreatesFile(target)))
  # The payload is live: a plain pickle.loads would create the file.
  control = tmp_path / 'control'
  pickle.loads(pickle.dumps(_CreatesFile(control))).close()
  assert control.exists()
  path = tmp_path / 'variables.pkl'
  path.write_bytes(payload)
  with pytest.raises(ia.AuthorsImportError) as err:
    ia.load_variables(path)
  assert 'would construct io.open' in str(err.value) or \
      'would construct builtins.open' in str(err.value)
  assert 'was not loaded' in str(err.value)
  assert not target.exists()


def test_pickle_calling_os_system_is_refused(tmp_path):
  target = tmp_path / 'touched'

  class Shell:
    def __reduce__(self):
      return (os.system, (f'touch {target}',))

  path = tmp_path / 'variables.pkl'
  path.write_bytes(pickle.dumps([Shell()]))
  with pytest.raises(ia.AuthorsImportError, match=r'would construct (posix|os|nt)\.system'):
    ia.load_variables(path)
  assert not target.exists()


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_safe_loader_reads_arrays_and_scalars(tmp_path, protocol):
  values = (np.int32(7), np.arange(6, dtype=np.float32).reshape(2, 3), np.float64(1.0),
            np.array(3.5, np.float32), np.ones((2, 2), np.float32)[:, :1])
  path = tmp_path / 'variables.pkl'
  path.write_bytes(pickle.dumps(values, protocol=protocol))
  arrays = ia.load_variables(path)
  assert [a.dtype for a in arrays] == [np.int32, np.float32, np.float64, np.float32, np.float32]
  for got, want in zip(arrays, values):
    np.testing.assert_array_equal(got, want)


def test_object_arrays_and_other_containers_are_refused(tmp_path):
  path = tmp_path / 'variables.pkl'
  path.write_bytes(pickle.dumps((np.array([1, 'x'], dtype=object),)))
  with pytest.raises(ia.AuthorsImportError, match='dtype object'):
    ia.load_variables(path)
  path.write_bytes(pickle.dumps({'a': np.zeros(2)}))
  with pytest.raises(ia.AuthorsImportError, match='holds a dict'):
    ia.load_variables(path)


# ----------------------------------------------------------------------------- shape checks

def test_mismatched_checkpoint_names_variable_and_shapes(tmp_path):
  """The discrete checkpoint (deter 32) with a config saying rssm.deter 24."""
  folder = _need(DISCRETE)
  config = _authors_config(folder)
  config['rssm']['deter'] = 24
  path = _write_config(tmp_path / 'config.yaml', config)
  with pytest.raises(ia.AuthorsImportError) as err:
    ia.load_authors(folder / 'variables.pkl', path)
  # feat = 4·4 + 24 = 40 inputs instead of 48; index 2 is the first variable that sees it.
  assert str(err.value).startswith(
      f'{folder / "variables.pkl"}: variable 2 (_task_behavior/_target_critic/_modules/dense0/'
      'kernel) has shape [48, 16] in the checkpoint, but the config implies [40, 16].')


def test_missing_variables_are_reported(tmp_path):
  folder = _need(DISCRETE)
  arrays = ia.load_variables(folder / 'variables.pkl')
  path = tmp_path / 'variables.pkl'
  path.write_bytes(pickle.dumps(tuple(arrays[:-2])))
  with pytest.raises(ia.AuthorsImportError, match='holds 63 variables, but the config implies 65'):
    ia.load_authors(path, folder / 'config.yaml')


# ----------------------------------------------------------------------------- config translation

def test_translation_copies_values_and_reports_unused_keys():
  translation = ia.translate_config(_authors_config(_need(DISCRETE)))
  config = translation.config
  assert (config.task, config.rssm.deter, config.rssm.discrete, config.discount) == \
      ('atari_pong', 32, 4, 0.999)
  assert config.actor_ent == '0.001' and config.loss_scales.kl == 0.1
  assert config.slow_target_fraction == 1.0 and config.model_opt.lr == 2e-4
  assert translation.discrete and translation.image_shape == (64, 64, 1)
  unused = {key for key, _, _ in translation.unused}
  assert config.disag_models == 10 and config.expl_head.units == 400  # copied (expl.py)
  assert config.expl_behavior == 'greedy' and config.expl_until == 0
  for key in ('log_keys_video', 'encoder.mlp_layers',
              'loss_scales.proprio', 'replay.maxlen', 'envs_parallel'):
    assert key in unused
  for key in ('rssm.deter', 'rssm.ensemble', 'rssm.std_act', 'rssm.min_std', 'rssm.norm'):
    assert key not in unused
  assert (config.rssm.std_act, config.rssm.min_std, config.rssm.norm) == ('sigmoid2', 0.1, 'none')
  assert any(note.startswith('atari_sticky: 0.25') for note in translation.notes)


def test_translation_takes_gaussian_latents_and_rssm_norm():
  authors = _authors_config(_need(DISCRETE))
  authors['rssm'].update(discrete=False, std_act='softplus', min_std=0.2, norm='layer')
  config = ia.translate_config(authors).config
  assert config.rssm.discrete == 0 and not isinstance(config.rssm.discrete, bool)
  assert (config.rssm.std_act, config.rssm.min_std, config.rssm.norm) == ('softplus', 0.2, 'layer')


@pytest.mark.parametrize('key, value, message', [
    ('rssm.ensemble', 2, "rssm.ensemble: 2; only 1 can be imported"),
    ('expl_behavior', 'Random', "expl_behavior: 'Random'; allowed: greedy, Plan2Explore, "
     "ModelLoss"),
    ('expl_opt.opt', 'sgd', "expl_opt.opt: 'sgd'; only 'adam'"),
    ('expl_head.dist', 'normal', "expl_head.dist: 'normal'; only 'mse'"),
    ('rssm.norm', 'batch', "'rssm.norm' is 'batch'; allowed: none, layer"),
    ('rssm.std_act', 'tanh', "'rssm.std_act' is 'tanh'; allowed: softplus, sigmoid, sigmoid2"),
    ('encoder.mlp_keys', '.*', "encoder.mlp_keys: '.*', which matches vector observations"),
    ('decoder.cnn_keys', '$^', "decoder.cnn_keys: '$^', which does not match 'image'"),
    ('rssm.discrete', True, 'rssm.discrete: True; allowed: a number of classes >= 1'),
    ('clip_rewards', 'sign', "clip_rewards: 'sign'"),
    ('actor.dist', 'tanh_normal', "actor.dist: 'tanh_normal'"),
    ('model_opt.opt', 'sgd', "model_opt.opt: 'sgd'; only 'adam'"),
])
def test_translation_refuses_what_cannot_be_honoured(key, value, message):
  config = _authors_config(_need(DISCRETE))
  node = config
  for part in key.split('.')[:-1]:
    node = node[part]
  node[key.split('.')[-1]] = value
  with pytest.raises(ia.AuthorsImportError) as err:
    ia.translate_config(config)
  assert message in str(err.value)


# ----------------------------------------------------------------------------- import command

def test_import_writes_a_checkpoint_that_restores_to_the_same_outputs(tmp_path, capsys):
  import tensorflow as tf
  from dreamerv2_tf.agent import ActSpace, Agent
  from dreamerv2_tf.evaluate import load_run_config
  from dreamerv2_tf.parity.authors import recompute
  folder = _need(DISCRETE)
  logdir = tmp_path / 'run'
  argv = ['--variables', str(folder / 'variables.pkl'), '--config', str(folder / 'config.yaml'),
          '--task', 'atari_pong', '--logdir', str(logdir)]
  assert ia.main(argv) == 0  # builds Pong once to check the 6 actions
  out = capsys.readouterr().out
  assert 'envs_parallel' in out and 'Environment check: atari_pong: 6 discrete' in out
  assert f'Continue training: {ia._python()} train.py --task atari_pong' in out
  assert 'python' in ia._python()
  assert (logdir / 'config.yaml').exists()
  record = json.loads((logdir / 'authors_import.json').read_text())
  assert record['variables_count'] == 65 and record['parameters'] == 92758
  assert record['dropped_variables'] == []  # rewnorm/mag now fills the reward normaliser
  prefix = tf.train.latest_checkpoint(str(logdir / 'checkpoints'))
  assert prefix and prefix.endswith('ckpt-0') and record['checkpoint'] == prefix
  # The checkpoint holds the training loop's objects.
  keys = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  assert {k.split('/')[0] for k in keys} >= {'agent', 'step', 'tf_rng', 'host'}

  # A fresh agent from the written config, restored as evaluate.py does.
  config = load_run_config(logdir)
  assert config.rssm.deter == 32 and config.logdir == str(logdir)
  step = tf.Variable(5, dtype=tf.int64)
  agent = Agent(config, {'image': ((64, 64, 1), np.uint8)}, ActSpace(True, 6), step)
  status = tf.train.Checkpoint(step=step, agent=agent).restore(prefix)
  status.assert_existing_objects_matched()
  assert int(step.numpy()) == 0 and int(agent.updates.numpy()) == 0
  imported = ia.load_authors(folder / 'variables.pkl', folder / 'config.yaml')
  with np.load(folder / 'inputs.npz') as f:
    inputs = dict(f)
  restored = recompute(ia.Imported(agent, step, imported.translation, imported.layout, [], {}),
                       inputs)
  direct = recompute(imported, inputs)
  assert restored.keys() == direct.keys()
  for name in direct:
    np.testing.assert_array_equal(restored[name], direct[name], err_msg=name)
  # The values are the authors' (spot checks against the pickle).
  arrays = ia.load_variables(folder / 'variables.pkl')
  np.testing.assert_array_equal(agent.wm.rssm.cell.dense.kernel.numpy(), arrays[51])
  np.testing.assert_array_equal(agent.ac.target_critic.out.kernel.numpy(), arrays[6])
  # The target critic's hidden layers are in no optimiser; the checkpoint must still hold them.
  np.testing.assert_array_equal(agent.ac.target_critic.hidden[0].kernel.numpy(), arrays[2])
  np.testing.assert_array_equal(agent.wm.heads['decoder'].convs[0].kernel.numpy(), arrays[29])

  # Nothing is overwritten: a second import into the same folder is refused.
  assert ia.main(argv + ['--no_env_check']) == 1
  assert 'already holds config.yaml' in capsys.readouterr().err


def test_import_takes_step_and_updates_from_the_checkpoint(tmp_path):
  """tfstep and _updates of a trained run become the agent step and agent.updates."""
  folder = _need(CONTINUOUS)
  arrays = ia.load_variables(folder / 'variables.pkl')
  arrays[0] = np.array(123456, np.int32)
  arrays[1] = np.array(789, np.int32)
  path = tmp_path / 'variables.pkl'
  path.write_bytes(pickle.dumps(tuple(arrays)))
  imported = ia.load_authors(path, folder / 'config.yaml', 'dmc_walker_walk')
  assert int(imported.step.numpy()) == 123456
  assert int(imported.agent.updates.numpy()) == 789
  assert imported.agent.ac.actor.std is not None and imported.agent.action_size == 3
  assert imported.translation.config.task == 'dmc_walker_walk'
  assert imported.translation.config.pred_discount is False


PLAN2EXPLORE = REPO / 'tests' / 'fixtures' / 'update_plan2explore_seed7'


def test_plan2explore_layout_matches_the_authors_variables_json():
  folder = _need(PLAN2EXPLORE)
  translation = ia.translate_config(_authors_config(folder))
  assert translation.config.expl_behavior == 'plan2explore'
  layout = ia.authors_layout(translation.config, translation.image_shape, 6, True)
  ia.check_variables_json(layout, folder / 'variables.json')
  # The explorer's actor is visited as its own attribute, after the actor-critic's critic.
  paths = [e.path for e in layout]
  assert paths.index('_expl_behavior/actor/_modules/dense0/kernel') > paths.index(
      '_expl_behavior/ac/rewnorm/mag')
  assert not any(p.startswith('_expl_behavior/ac/actor/') for p in paths)


def test_ensemble_members_are_ordered_by_number_like_tf_module():
  config = _authors_config(_need(PLAN2EXPLORE))
  config['disag_models'] = 12
  translation = ia.translate_config(config)
  layout = ia.authors_layout(translation.config, translation.image_shape, 6, True)
  members = [e.path.split('/')[2] for e in layout
             if e.path.startswith('_expl_behavior/_networks/')]
  assert list(dict.fromkeys(members)) == [str(i) for i in range(12)]  # 10 after 9, not after 1
