"""What the first GPU run would otherwise find: FSDP2 mixed precision, resharding, loading, HF's
auto-compile and the flash-attn import, checked on CPU (FSDP2 on 2 real gloo ranks)."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import torch

from socialr1.config import ModelConfig
from socialr1.models import ModelLoadError, attention, attn_implementation, load_pretrained
from tests.test_distributed import ROOT, TINY, torchrun

CUDA = torch.device("cuda")  # only a device name: nothing runs on it


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One Trainer per rank in bf16 mixed precision (beta > 0: a reference model; two iterations:
    old log-probs): what tests/dist_gpu_readiness.py saw on each rank."""
    tmp = tmp_path_factory.mktemp("ranks")
    args = TINY + ["--model.dtype", "bfloat16", "--grpo.beta", "0.1", "--grpo.num-iterations", "2",
                   "--grpo.micro-batch-size", "3", "--rollout.prompts-per-step", "4", "--rollout.max-new-tokens", "8",
                   "--output-dir", str(tmp / "run")]
    torchrun(2, "tests/dist_gpu_readiness.py", [str(tmp), *args], tmp)
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def test_loss_inputs_reach_the_kernel_in_float32_under_bf16_mixed_precision(two_ranks):
    for rank in two_ranks:
        assert rank["loss_inputs"] == {"hidden": "torch.bfloat16", "advantages": "torch.float32",
                                       "old_logp": "torch.float32", "ref_logp": "torch.float32"}
        assert rank["loss_finite"]


def test_leaving_gathered_restores_each_groups_reshard_setting(two_ranks):
    """After a rollout, a forward leaves the root's weights gathered (FSDP's default for the root,
    whose backward would need them at once) and the layers' resharded."""
    for rank in two_ranks:
        assert rank["root_and_layers_sharded_after_forward"] == [False, True]


def test_reference_model_reshards_after_its_logprob_pass(two_ranks):
    for rank in two_ranks:
        assert rank["ref_sharded_after_update"]


def test_loading_takes_turns_and_the_reference_is_never_a_full_copy(two_ranks):
    (start0, end0), (start1, end1) = two_ranks[0]["turn"], two_ranks[1]["turn"]
    assert start0 < end0 <= start1 < end1
    for rank in two_ranks:
        assert rank["copy_equal"] and rank["copy_buffers_equal"]
        # Each rank allocates its half and FSDP's padded staging (about 1.3-1.5 shards, depending on
        # how the rows split): 0.64 and 0.77 of the model on the two ranks here; a deepcopy before
        # sharding would allocate at least the whole model.
        assert rank["copy_bytes_over_full"] < 0.9


@pytest.fixture()
def fake_flash_attn(tmp_path, monkeypatch):
    """Put a `flash_attn` package on the path, with the given body."""

    def install(body: str) -> None:
        (tmp_path / "flash_attn").mkdir()
        (tmp_path / "flash_attn" / "__init__.py").write_text(body)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "flash_attn", raising=False)

    return install


def test_flash_attn_built_against_another_torch_falls_back_to_sdpa(fake_flash_attn):
    # What a wheel for another torch does: found by find_spec, fails when its extension loads.
    fake_flash_attn("raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')")
    assert attn_implementation("auto", CUDA) == "sdpa"
    with pytest.raises(ModelLoadError, match="--model.attn-implementation flash_attention_2: .*undefined symbol"):
        attn_implementation("flash_attention_2", CUDA)


def test_flash_attn_default(fake_flash_attn):
    fake_flash_attn("def flash_attn_func(): pass\ndef flash_attn_varlen_func(): pass\n")
    assert attn_implementation("auto", CUDA) == "flash_attention_2"
    assert attn_implementation("auto", torch.device("cpu")) == "sdpa"
    assert attn_implementation("eager", CUDA) == "eager"


def test_attention_switches_the_kernel_for_a_block(lm):
    ids = torch.tensor([[5, 6, 7, 8]])
    sdpa = lm(ids).logits
    with attention(lm, "eager"):
        assert lm.config._attn_implementation == "eager"
        torch.testing.assert_close(lm(ids).logits, sdpa, atol=1e-5, rtol=1e-5)
    assert lm.config._attn_implementation == "sdpa"


def test_random_init_builds_the_configs_shape_from_config_and_tokenizer_only(tmp_path, lm, tokenizer):
    lm.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = ModelConfig(name_or_path=str(tmp_path), random_init=True)
    one, tok = load_pretrained(cfg, torch.device("cpu"), seed=3)
    two, _ = load_pretrained(cfg, torch.device("cpu"), seed=3)
    assert one.config.num_hidden_layers == lm.config.num_hidden_layers and len(tok) == len(tokenizer)
    for (name, a), b, c in zip(one.named_parameters(), two.parameters(), lm.parameters()):
        assert a.dtype == torch.float32 and a.shape == c.shape, name
        assert torch.equal(a, b), name  # the same seed: every rank builds the same weights
    assert not torch.equal(one.lm_head.weight, lm.lm_head.weight)


def test_gpu_check_dry_run_passes_on_cpu(tmp_path):
    """Every part of the GPU check runs (tiny shapes, CPU) and its verdict table has no failure,
    the gradient and training checks included: the policy's loss gradient against float32 logits,
    rewards that differ within groups, a non-zero gradient and weights that moved."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert {r["part"] for r in rows} == {"kernels", "rollout", "attention", "gradients", "train", "plan"}
    checks = {r["check"] for r in rows}
    for check in ("gradients: policy (fused kernels, bf16) vs float32 logits", "train.py: rewards differ within groups",
                  "train.py: loss, KL, grad norm finite; grad norm non-zero", "train.py: weights moved",
                  "plan vs train.py: peak memory", "plan vs train.py: step time"):
        assert check in checks, check
    assert "all checks passed" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_writes_under_runs_by_default():
    """Its results go where --out-dir points, by default runs/gpu_check: git-ignored, so a check
    (CI runs the dry run) leaves the checkout clean."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = gpu_check.Config().out_dir
    assert out == ROOT / "runs" / "gpu_check"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", str(out / "gpu_check.md")], cwd=ROOT)
        assert ignored.returncode == 0, f"{out} is not git-ignored"
