"""`study train` end to end on the bundled real subset, against a private MLflow store."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from study.cli import main
from tests.conftest import all_runs

TINY = ["--epochs", "2", "--train-limit", "200", "--test-limit", "50", "--log-every", "10",
        "--threads", "1", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_train_logs_a_complete_run(tracking, mini_dir, session_cache):
    res = invoke("train", "--optimizer", "adam", "--bn", "--init", "kaiming", "--scheduler", "step",
                 "--seed", "3", "--data-dir", str(mini_dir), "--cache-dir", str(session_cache), *TINY)
    assert res.exit_code == 0, res.output
    (run,) = all_runs(tracking)
    client = MlflowClient(tracking)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "adam-bn-kaiming-step-s3"
    p, t = run.data.params, run.data.tags
    assert (p["optimizer"], p["bn"], p["init"], p["scheduler"], p["seed"], p["lr"]) == \
        ("adam", "true", "kaiming", "step", "3", "0.001")
    assert (t["optimizer"], t["bn"], t["init"], t["scheduler"], t["seed"]) == ("adam", "true", "kaiming", "step", "3")
    assert len(t["run_key"]) == 20 and t["data_layout"] == "imagefolder" and t["data_encoding"] == "jpeg"
    assert t["torch_threads"] == "1" and t["device"] == "cpu" and "git_commit" in t and "git_dirty" in t
    # curves with steps: train_loss at global batch indices, test metrics per epoch
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in loss][:2] == [9, 19] and len(loss) == 10  # 50 batches/epoch, every 10
    acc = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [m.step for m in acc] == [1, 2]
    assert run.data.metrics["final_test_accuracy"] == acc[-1].value
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == [1, 2]
    # data recorded as dataset inputs (train and test)
    names = sorted(d.dataset.name for d in run.inputs.dataset_inputs)
    assert names == ["cifar10-jpeg-test", "cifar10-jpeg-train"]
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} == {t["data_fingerprint"][:16]}
    # the model is logged and loads back
    import mlflow.pytorch
    import torch

    (model_out,) = run.outputs.model_outputs
    model = mlflow.pytorch.load_model(f"models:/{model_out.model_id}")
    out = model(torch.zeros(3, 3, 32, 32))
    assert tuple(out.shape) == (3, 10)


def test_bad_value_names_it_and_creates_no_run(tracking, mini_dir):
    res = CliRunner().invoke(main, ["train", "--optimizer", "rmsprop", "--data-dir", str(mini_dir)])
    assert res.exit_code != 0
    assert "rmsprop" in res.output and "manual_sgd" in res.output and "adam" in res.output
    res = CliRunner().invoke(main, ["train", "--bn", "maybe", "--data-dir", str(mini_dir)])
    assert res.exit_code != 0 and "maybe" in res.output and "true" in res.output
    assert all_runs(tracking) == []


def test_missing_data_says_where_and_how_and_creates_no_run(tracking, tmp_path):
    res = CliRunner().invoke(main, ["train", "--data-dir", str(tmp_path / "nowhere")])
    assert res.exit_code == 1
    assert str(tmp_path / "nowhere") in res.output
    assert "cifar-10-batches-py" in res.output and "CIFAR10_DIR" in res.output
    assert all_runs(tracking) == []


def test_divergence_is_a_failed_run_tagged_with_its_step(tracking, mini_dir, session_cache):
    res = CliRunner().invoke(main, ["train", "--optimizer", "sgd", "--lr", "1e6", "--data-dir",
                                    str(mini_dir), "--cache-dir", str(session_cache), *TINY])
    assert res.exit_code == 1
    (run,) = all_runs(tracking)
    assert run.info.status == "FAILED"
    assert run.data.tags["diverged"] == "true"
    assert int(run.data.tags["diverged_step"]) >= 0
    assert "final_test_accuracy" not in run.data.metrics


@pytest.mark.parametrize("command", ["train", "verify"])
def test_every_option_has_help(command):
    from study.cli import main as group

    cmd = group.commands[command]
    missing = [p.name for p in cmd.params if getattr(p, "help", None) in (None, "") and p.name != "help"]
    assert missing == []


def test_verify_passes_on_the_bundled_subset(session_cache):
    res = invoke("verify", "--cache-dir", str(session_cache), "--train-limit", "200", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert res.output.count("PASS") == 5 and "FAIL" not in res.output
    assert "fast kernels" in res.output


def test_verify_on_cuda_without_a_gpu_is_a_clear_error(session_cache):
    import torch

    if torch.cuda.is_available():  # the machine has a GPU: the error cannot happen here
        res = invoke("verify", "--cache-dir", str(session_cache), "--train-limit", "100", "--device", "cuda")
        assert res.exit_code == 0, res.output
        return
    res = invoke("verify", "--cache-dir", str(session_cache), "--train-limit", "100", "--device", "cuda")
    assert res.exit_code == 2 and "no CUDA GPU is visible" in res.output
