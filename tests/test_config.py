"""The training request: every default, range, enum and cross-field rule of SPEC-endpoint.md."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ltx_ray.config import RESOLUTION_BUCKETS, dump_yaml, explain, load_config, redact, run_name
from ltx_ray.config.fields import descriptions
from ltx_ray.config.schema import (DEFAULT_NEGATIVE_PROMPT, ClusterConfig, JobConfig, RequestConfig,
                                   ValidationSample)
from ltx_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "conf" / "default.yaml"
DEMO = ROOT / "conf" / "demo.yaml"
URL = "request.training_data_url=https://example.com/a.zip"


def _load(*overrides: str):
    job, warnings = load_config(None, [URL, *overrides])
    return job, warnings


def _problems(*overrides: str, path=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, [URL, *overrides] if path is None else list(overrides))
    return [p.where for p in info.value.problems]


def test_defaults_match_the_spec():
    r = _load()[0].request
    assert (r.trigger_phrase, r.rank, r.number_of_steps, r.learning_rate) == ("", 32, 2000, 0.0002)
    assert (r.reference_downscale_factor, r.reference_temporal_scale_factor) == (1, 1)
    assert (r.number_of_frames, r.frame_rate, r.resolution, r.aspect_ratio) == (89, 24, "medium", "1:1")
    assert (r.auto_scale_input, r.split_input_into_scenes, r.split_input_duration_threshold) == (False, False, 30.0)
    assert (r.audio_normalize, r.audio_preserve_pitch) == (True, True)
    assert r.validation == []
    assert r.validation_negative_prompt == DEFAULT_NEGATIVE_PROMPT and "worst quality" in r.validation_negative_prompt
    assert (r.validation_number_of_frames, r.validation_frame_rate) == (89, 24)
    assert (r.validation_resolution, r.validation_aspect_ratio) == ("high", "1:1")
    assert (r.stg_scale, r.debug_dataset) == (1.0, False)


def test_defaults_where_the_spec_is_silent_are_the_official_av2av_recipes():
    # ltx-trainer configs/av2av_ic_lora.yaml and its trainer: linear LR schedule, no warmup,
    # torch AdamW (weight decay 0.01), clip 1.0, gradient checkpointing, bf16, checkpoints every
    # 250 steps keeping 3, validation every 100 steps with 30 inference steps.
    job = _load()[0]
    o, c = job.optimizer, job.cluster
    assert (o.lr_scheduler, o.warmup_steps, o.weight_decay, o.max_grad_norm) == ("linear", 0, 0.01, 1.0)
    assert (c.gradient_checkpointing, c.precision, c.micro_batch_size) == (True, "bf16", 1)
    assert (job.checkpoint.every, job.checkpoint.keep) == (250, 3)
    assert (job.preview.every, job.preview.inference_steps) == (100, 30)
    assert job.model.lora_targets == ["attn1", "attn2", "audio_attn1", "audio_attn2",
                                      "audio_to_video_attn", "video_to_audio_attn"]


@pytest.mark.parametrize("warmup", [0, 10])
def test_linear_schedule_is_torchs_linear_lr_from_1_to_a_tenth_as_the_official_trainer(warmup):
    import torch

    from ltx_ray.train.deepspeed_config import lr_lambda

    steps = 100
    job = _load(f"request.number_of_steps={steps}", f"optimizer.warmup_steps={warmup}")[0]
    fn = lr_lambda(job)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    official = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1,
                                                 total_iters=steps - warmup)
    for step in range(warmup, steps + 1):
        assert fn(step) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-9), step
        optimizer.step()
        official.step()
    assert fn(steps) == pytest.approx(0.1)
    if warmup:
        assert [fn(s) for s in range(warmup)] == pytest.approx([(s + 1) / warmup for s in range(warmup)])


def test_training_data_url_is_required():
    with pytest.raises(ConfigError) as info:
        load_config(None, [])
    assert "request.training_data_url" in str(info.value)


def test_default_yaml_is_valid_and_is_the_recommended_config():
    job, warnings = load_config(DEFAULT)
    assert warnings == []
    assert job.request.trigger_phrase == "av_st9le"
    assert job.request.validation[0].reference_video_url == "https://example.com/ref.mp4"


def test_ltx25_yaml_is_the_recommended_config_on_ltx25s_four_files():
    job, warnings = load_config(ROOT / "conf" / "ltx25.yaml")
    default, _ = load_config(DEFAULT)
    assert warnings == [] and job.request == default.request and job.cluster == default.cluster
    m = job.model
    assert [m.checkpoint, m.video_vae, m.audio_vae, m.text_encoder] == [
        f"s3://my-bucket/models/ltx-2.5/{name}.safetensors" for name in (
            "ltx-2.5-22b-dev-transformer-bf16", "ltx-2.5-video-vae-conv-bf16", "ltx-2.5-audio-vae-bf16",
            "gemma4-12b-with-proj-ltx-2.5-bf16")]


def test_demo_yaml_is_valid_and_tiny():
    job, _ = load_config(DEMO)
    assert job.cluster.use_gpu is False and job.cluster.num_workers == 2
    assert job.request.number_of_frames == 9


def test_resolution_table_has_every_bucket_of_the_spec():
    assert RESOLUTION_BUCKETS[("low", "16:9")] == (512, 288)
    assert RESOLUTION_BUCKETS[("medium", "1:1")] == (768, 768)
    assert RESOLUTION_BUCKETS[("high", "9:16")] == (544, 960)
    assert len(RESOLUTION_BUCKETS) == 9


@pytest.mark.parametrize("rank", [8, 16, 32, 64, 128])
def test_every_allowed_rank_is_accepted(rank):
    assert _load(f"request.rank={rank}")[0].request.rank == rank


@pytest.mark.parametrize("rank", [4, 24, 256])
def test_rank_outside_the_enum_is_rejected(rank):
    assert _problems(f"request.rank={rank}") == ["request.rank"]


@pytest.mark.parametrize(
    "field,bad",
    [
        ("number_of_steps", 99),
        ("number_of_steps", 20001),
        ("reference_downscale_factor", 0),
        ("reference_downscale_factor", 9),
        ("reference_temporal_scale_factor", 9),
        ("number_of_frames", 8),
        ("number_of_frames", 122),
        ("frame_rate", 7),
        ("frame_rate", 61),
        ("split_input_duration_threshold", 0.5),
        ("split_input_duration_threshold", 61.0),
        ("validation_number_of_frames", 130),
        ("validation_frame_rate", 61),
        ("stg_scale", 3.5),
        ("stg_scale", -0.1),
        ("learning_rate", 0),
    ],
)
def test_out_of_range_values_are_rejected(field, bad):
    assert f"request.{field}" in _problems(f"request.{field}={bad}")


@pytest.mark.parametrize(
    "field,bad",
    [
        ("resolution", "ultra"),
        ("aspect_ratio", "4:3"),
        ("validation_resolution", "4k"),
        ("validation_aspect_ratio", "21:9"),
    ],
)
def test_enum_values_are_enforced(field, bad):
    assert _problems(f"request.{field}={bad}") == [f"request.{field}"]


def test_number_of_frames_snaps_down_to_8k_plus_1_with_a_warning():
    job, warnings = _load("request.number_of_frames=100")
    assert job.request.number_of_frames == 97
    assert any("number_of_frames" in w and "97" in w for w in warnings)


def test_validation_number_of_frames_snaps_down_too():
    job, warnings = _load("request.validation_number_of_frames=50")
    assert job.request.validation_number_of_frames == 49
    assert len(warnings) == 1


def test_valid_frame_counts_are_not_snapped():
    job, warnings = _load("request.number_of_frames=121")
    assert job.request.number_of_frames == 121 and warnings == []


def test_temporal_factor_2_rejected_for_89_frames():
    # The spec's own example: (89 - 1) / 2 = 44 is not a multiple of 8.
    assert set(_problems("request.reference_temporal_scale_factor=2")) == {"request.reference_temporal_scale_factor"}


def test_temporal_factor_2_accepted_for_97_frames():
    job, _ = _load(
        "request.reference_temporal_scale_factor=2",
        "request.number_of_frames=97",
        "request.validation_number_of_frames=97",
    )
    assert job.request.reference_temporal_scale_factor == 2


def test_temporal_factor_checked_against_validation_frames_too():
    problems = _problems(
        "request.reference_temporal_scale_factor=2",
        "request.number_of_frames=97",  # fine for training
        "request.validation_number_of_frames=89",  # not for validation
    )
    assert problems == ["request.reference_temporal_scale_factor"]


def test_temporal_factor_that_does_not_divide_frames_minus_one_is_rejected():
    # (89 - 1) = 88 is not divisible by 3.
    assert set(_problems("request.reference_temporal_scale_factor=3")) == {"request.reference_temporal_scale_factor"}


def test_temporal_factor_checked_after_snapping():
    # 100 snaps to 97, and (97 - 1) / 4 = 24 is a multiple of 8.
    job, _ = _load(
        "request.reference_temporal_scale_factor=4",
        "request.number_of_frames=100",
        "request.validation_number_of_frames=100",
    )
    assert job.request.number_of_frames == 97


def test_downscale_factor_2_accepted_at_default_resolutions():
    # medium 1:1 768 -> 384, high 1:1 960 -> 480: both divisible by 32.
    assert _load("request.reference_downscale_factor=2")[0].request.reference_downscale_factor == 2


def test_downscale_factor_must_divide_the_resolution():
    # 768 / 5 is not an integer.
    assert _problems("request.reference_downscale_factor=5") == ["request.reference_downscale_factor"]


def test_downscale_factor_must_leave_a_multiple_of_32():
    # medium 16:9 is 768x448; 448 / 4 = 112 is not divisible by 32.
    problems = _problems(
        "request.reference_downscale_factor=4",
        "request.aspect_ratio=16:9",
        "request.validation_resolution=medium",
        "request.validation_aspect_ratio=16:9",
    )
    assert set(problems) == {"request.reference_downscale_factor"}


def test_downscale_factor_checked_against_validation_resolution_too():
    # Training low 1:1 (512 / 4 = 128 ok); validation high 1:1 (960 / 4 = 240, not a multiple of 32).
    with pytest.raises(ConfigError) as info:
        load_config(None, [URL, "request.reference_downscale_factor=4", "request.resolution=low"])
    assert len(info.value.problems) == 1
    assert "validation" in info.value.problems[0].message


def test_scene_splitting_is_refused_with_the_spec_reason():
    with pytest.raises(ConfigError) as info:
        _load("request.split_input_into_scenes=true")
    assert info.value.problems[0].where == "request.split_input_into_scenes"
    assert "desync" in info.value.problems[0].message


def test_at_most_two_validation_samples():
    sample = "{prompt: p, reference_video_url: v.mp4}"
    assert _problems(f"request.validation=[{sample},{sample},{sample}]") == ["request.validation"]


def test_validation_sample_needs_a_reference_video():
    assert _problems("request.validation=[{prompt: p}]") == ["request.validation[0].reference_video_url"]


def test_validation_sample_reference_audio_is_optional():
    job, _ = _load("request.validation=[{prompt: p, reference_video_url: v.mp4, reference_audio_url: a.wav}]")
    assert job.request.validation[0].reference_audio_url == str(Path("a.wav").absolute())


def test_relative_local_paths_become_absolute_but_uris_stay():
    # Ray workers run in other folders and on other nodes.
    job, _ = load_config(None, ["request.training_data_url=data/a.zip", "model.text_encoder=s3://b/gemma"])
    assert job.request.training_data_url == str(Path("data/a.zip").absolute())
    assert job.model.text_encoder == "s3://b/gemma"


def test_unknown_fields_are_rejected():
    assert _problems("request.rnak=32") == ["request.rnak"]


def test_aspect_ratio_override_stays_a_string():
    # Plain YAML 1.1 would read 16:9 as the sexagesimal number 969.
    assert _load("request.aspect_ratio=16:9")[0].request.aspect_ratio == "16:9"


def test_scientific_learning_rate_is_a_number():
    assert _load("request.learning_rate=1e-4")[0].request.learning_rate == 1e-4


def test_wrong_types_name_the_field():
    assert _problems("request.number_of_steps=many") == ["request.number_of_steps"]


def test_several_errors_are_reported_together():
    problems = _problems(
        "request.rank=7",
        "request.number_of_steps=5",
        "request.resolution=huge",
        "request.reference_temporal_scale_factor=2",
        "request.split_input_into_scenes=true",
        "request.stg_scale=9",
    )
    assert set(problems) == {
        "request.rank",
        "request.number_of_steps",
        "request.resolution",
        "request.reference_temporal_scale_factor",
        "request.split_input_into_scenes",
        "request.stg_scale",
    }


def test_cluster_and_tracking_enums_are_enforced():
    assert set(_problems("cluster.zero_stage=1", "tracking.mode=maybe")) == {"cluster.zero_stage", "tracking.mode"}


def test_redaction_hides_secrets_and_presigned_queries():
    tree = {
        "api_key": "abc",
        "url": "https://user:pw@host/x.zip?X-Amz-Signature=deadbeef",
        "plain": "https://host/x.zip",
    }
    out = redact(tree)
    assert out["api_key"] == "<redacted>"
    assert "pw" not in out["url"] and "deadbeef" not in out["url"]
    assert out["plain"] == "https://host/x.zip"


def test_dump_never_prints_a_presigned_signature():
    job, _ = load_config(None, ["request.training_data_url=https://h/d.zip?X-Amz-Signature=s3cr3t"])
    assert "s3cr3t" not in dump_yaml(job)


def test_run_name_is_stable_for_the_same_request_and_changes_with_it():
    a, _ = _load()
    b, _ = _load()
    c, _ = _load("request.rank=64")
    assert run_name(a) == run_name(b) != run_name(c)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltx_ray", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_validate_default_exits_0_and_prints_yaml():
    res = _cli("validate", str(DEFAULT))
    assert res.returncode == 0, res.stderr
    assert "training_data_url: https://example.com/av2av_pairs.zip" in res.stdout


def test_cli_validate_rejects_temporal_factor_2_with_exit_2_naming_the_field():
    res = _cli("validate", str(DEFAULT), "request.reference_temporal_scale_factor=2")
    assert res.returncode == 2
    assert "request.reference_temporal_scale_factor" in res.stderr


def test_cli_validate_missing_file_exits_2():
    res = _cli("validate", "no/such/config.yaml")
    assert res.returncode == 2 and "not found" in res.stderr


def test_num_workers_takes_an_int_or_a_min_max_range_and_the_global_batch_defaults_to_max_workers():
    job, _ = load_config(ROOT / "conf" / "demo.yaml", ["cluster.num_workers=[1, 2]", "cluster.micro_batch_size=2",
                                                       "cluster.gradient_accumulation_steps=3"])
    c = job.cluster
    assert (c.min_workers, c.max_workers, c.elastic) == (1, 2, True)
    assert c.global_batch_size == 2 * 3 * 2
    assert (c.accumulation_steps(1), c.accumulation_steps(2)) == (6, 3)
    fixed, _ = load_config(ROOT / "conf" / "demo.yaml", ["cluster.num_workers=[2, 2]"])
    assert fixed.cluster.num_workers == 2 and not fixed.cluster.elastic


def test_a_worker_range_that_cannot_split_the_global_batch_is_refused_naming_the_field_and_what_works():
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "conf" / "demo.yaml", ["cluster.num_workers=[2, 4]", "cluster.global_batch_size=8"])
    (problem,) = err.value.problems
    assert problem.where == "cluster.global_batch_size"
    assert "over 3 worker(s)" in problem.message
    assert "Worker counts that divide it: 2, 4" in problem.message and "multiples of 12" in problem.message
    job, _ = load_config(ROOT / "conf" / "demo.yaml", ["cluster.num_workers=[2, 4]", "cluster.global_batch_size=24"])
    assert job.cluster.accumulation_steps(3) == 8


@pytest.mark.parametrize("bad", ["[3, 2]", "[0, 2]", "'many'", "[1, 2, 3]"])
def test_malformed_num_workers_is_refused(bad):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "conf" / "demo.yaml", [f"cluster.num_workers={bad}"])
    assert [p.where for p in err.value.problems] == ["cluster.num_workers"]


def test_validate_exits_2_on_an_impossible_worker_range():
    out = subprocess.run([sys.executable, "-m", "ltx_ray", "validate", str(ROOT / "conf" / "demo.yaml"),
                          "cluster.num_workers=[3, 4]", "cluster.global_batch_size=6"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert "cluster.global_batch_size: 6 samples per step cannot be split evenly over 4 worker(s)" in out.stderr


@pytest.mark.parametrize("override,where,message", [
    ("request.learning_rate=2", "request.learning_rate", "must be in (0, 1], got 2.0"),
    ("cluster.gpu_memory_gb=0", "cluster.gpu_memory_gb", "must be a positive number of GiB, got 0.0"),
    ("storage.run_name=a/b", "storage.run_name", "may contain only letters, digits, '.', '_' and '-' (max 128)"),
    ("storage.run_name=latents", "storage.run_name", "'latents' is the folder of the storage's latent cache: choose another name"),
    ("cluster.num_workers=5000", "cluster.num_workers", "must be between 1 and 4096, got 5000"),
    ("preview.every=0", "preview.every", "must be between 1 and 20000, got 0"),
])
def test_a_fields_own_rule_names_the_field_in_one_sentence(override, where, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [URL, override])
    assert [(p.where, p.message) for p in info.value.problems] == [(where, message)]


def test_check_changes_nothing_and_resolve_snaps_and_fills():
    job = JobConfig(request=RequestConfig(training_data_url="https://example.com/a.zip", number_of_frames=100),
                    cluster=ClusterConfig(num_workers=[4, 4], micro_batch_size=2))
    before = copy.deepcopy(job)
    assert job.check() == []
    assert job == before
    assert job.resolve() == ["request.number_of_frames: 100 is not of the form 8k+1; snapped down to 97"]
    assert (job.request.number_of_frames, job.cluster.num_workers, job.cluster.global_batch_size) == (97, 4, 8)


def _undescribed(cls: type, prefix: str = "") -> list[str]:
    """The fields under `cls` without a description (a section: without a class docstring)."""
    missing = []
    for f in dataclasses.fields(cls):
        section = f.default_factory if dataclasses.is_dataclass(f.default_factory) else None
        if section is not None:
            missing += [] if (section.__doc__ or "").strip() else [prefix + f.name]
            missing += _undescribed(section, f"{prefix}{f.name}.")
            continue
        if not descriptions(cls).get(f.name):
            missing.append(prefix + f.name)
    return missing


def test_every_field_has_a_description():
    assert _undescribed(JobConfig) == []
    assert _undescribed(ValidationSample, "request.validation[].") == []


def test_a_field_without_a_docstring_counts_as_undescribed():
    @dataclasses.dataclass
    class Section:
        """A section."""

        described: int = 1
        """What it is."""
        bare: int = 2

    assert _undescribed(Section) == ["bare"]


def test_validate_explain_prints_each_field_with_its_resolved_value_and_description():
    res = _cli("validate", "--explain", str(DEMO), "request.number_of_frames=12", "preview.every=7")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    frames = lines.index("request.number_of_frames=9")  # 12, snapped
    assert lines[frames + 1] == ("    Frames per training clip, 8k+1 (other values are snapped down). "
                                 "Must be between 9 and 121.")
    every = lines.index("preview.every=7")
    assert lines[every + 1].startswith("    Steps between previews")
    assert "cluster.global_batch_size=2" in lines  # filled in: 1 x 1 x 2 workers
    shown = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith((" ", "#"))}
    job, _ = load_config(DEMO)
    assert shown == set(_leaf_paths(job))


def _leaf_paths(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_paths(value, f"{prefix}{f.name}.")
            continue
        yield prefix + f.name
        for i, item in enumerate(value if isinstance(value, list) else []):
            if dataclasses.is_dataclass(item):
                yield from _leaf_paths(item, f"{prefix}{f.name}[{i}].")


def test_explain_never_prints_a_presigned_signature():
    job, _ = load_config(None, ["request.training_data_url=https://h/d.zip?X-Amz-Signature=s3cr3t"])
    assert "s3cr3t" not in explain(job) and "request.training_data_url=https://h/d.zip?<redacted>" in explain(job)
