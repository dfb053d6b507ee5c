import pytest

from study.config import ConfigError, TrainConfig, config_from_dict, derive_seed, run_key


def test_defaults_are_the_lectures():
    c = TrainConfig()
    assert (c.batch_size, c.lr, c.epochs, c.step_size, c.gamma) == (4, 0.001, 2, 30, 0.95)
    assert (c.beta1, c.beta2, c.eps) == (0.9, 0.999, 1e-8)


@pytest.mark.parametrize("field,value,allowed", [
    ("optimizer", "rmsprop", "manual_sgd, sgd, manual_adam, adam"),
    ("init", "orthogonal", "default, kaiming, xavier"),
    ("scheduler", "cosine", "none, step, exponential"),
    ("scheduler_interval", "sometimes", "epoch, batch, never"),
])
def test_bad_choice_names_value_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    assert repr(value) in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -1), ("lr", 0.0),
                                         ("gamma", 1.5), ("train_limit", 0), ("seed", -3)])
def test_bad_numbers_are_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="momentum"):
        config_from_dict({"optimizer": "sgd", "momentum": 0.9})


def test_seed_streams_are_separate_and_stable():
    c = TrainConfig(seed=3)
    assert c.resolved_init_seed == derive_seed(3, "init") != c.resolved_data_seed
    assert TrainConfig(seed=3, init_seed=7).resolved_init_seed == 7
    assert TrainConfig(seed=3, init_seed=7).resolved_data_seed == c.resolved_data_seed
    assert derive_seed(3, "init") != derive_seed(4, "init")


def test_run_key_covers_experiment_not_execution():
    base = TrainConfig(seed=1)
    k = run_key(base, "fp")
    assert run_key(TrainConfig(seed=1, threads=1, device="cpu", log_every=7), "fp") == k
    assert run_key(TrainConfig(seed=2), "fp") != k
    assert run_key(base, "other-data") != k
    assert run_key(TrainConfig(seed=1, lr=0.01), "fp") != k
    # explicit seeds equal to the derived ones, and the interval of an unscheduled run, change nothing
    assert run_key(TrainConfig(seed=1, init_seed=base.resolved_init_seed), "fp") == k
    assert run_key(TrainConfig(seed=1, scheduler_interval="never"), "fp") == k
    assert run_key(TrainConfig(seed=1, scheduler="step", scheduler_interval="never"), "fp") != \
        run_key(TrainConfig(seed=1, scheduler="step"), "fp")


def test_readable_names():
    assert TrainConfig(optimizer="adam", bn=True, init="kaiming", scheduler="step", seed=3).run_name \
        == "adam-bn-kaiming-step-s3"
    assert TrainConfig(scheduler="exponential", scheduler_interval="never").cell == \
        "adam-nobn-default-exponential@never"
