"""Security properties, each checked where data enters the program:

1. no pickle from data or from a model file is ever executed: the refs pickle (every protocol),
   SAM checkpoints, weight files of the metrics, ReferDiffusion's REM weights and its training
   resume state, a transformers or diffusers model's ``.bin``; and a static check that every ``torch.load``
   in the code passes ``weights_only=True`` and nothing calls ``pickle.load``/``np.load(allow_pickle)``;
2. a path taken from data never leaves its folder: split names in export file names, sample ids
   in review media, score outputs and ``dir:`` look-ups, exemplar names, a Label Studio task whose
   sample_id is ``../../x``;
3. text from data is escaped in the HTML gallery, in report.md and in what Label Studio renders
   as HTML; the labeling config holds no data;
4. no token (OpenAI, Label Studio, Ray, Hugging Face) appears in any output, error message or
   written file of a run against servers that refuse it (401), fail (500, echoing the token back)
   or are down.

Servers are the real Label Studio (session fixture), ``tests/support/fake_openai.py`` and tiny stdlib
HTTP servers on 127.0.0.1 started here.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterable, List

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_cli
from support.fake_openai import Reply, running
from support.labelstudio import all_tasks

from refcoco_edit.errors import InputError

OPENAI_KEY = "sk-SECURITYTEST-openai-4b1d9e7f20a3c6"
LS_KEY = "ls-SECURITYTEST-labelstudio-9e2c7a41"
RAY_KEY = "ray-SECURITYTEST-auth-51f0b8d2"
HF_KEY = "hf_SECURITYTESTtoken3c8e1a9f"
TOKENS = (OPENAI_KEY, LS_KEY, RAY_KEY, HF_KEY)
TOKEN_ENV = {"OPENAI_API_KEY": OPENAI_KEY, "LABEL_STUDIO_API_KEY": LS_KEY, "RAY_AUTH_TOKEN": RAY_KEY,
             "HF_TOKEN": HF_KEY, "HUGGING_FACE_HUB_TOKEN": HF_KEY}
SCRIPT = "<script>alert(1)</script>"
EVIL_TEXT = f' {SCRIPT} "dq" \'sq\' & <b>bold</b>'


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------

class _Payload:
    """Unpickled by anything that executes pickles, this creates the folder ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def small_build(tmp_path_factory, demo_dir) -> Path:
    """A 2-image demo workspace (4 samples) with its export."""
    from refcoco_edit.build import BuildConfig, build

    w = tmp_path_factory.mktemp("sec-build") / "W"
    build(BuildConfig.of(out=str(w), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=2,
                      progress=False), log=lambda s: None)
    return w


def _export_rows(w: Path) -> List[Dict[str, Any]]:
    from refcoco_edit.export import load_export

    return load_export(w / "export").to_pylist()


def _all_files_text(root: Path) -> Iterable[tuple]:
    """Every file's bytes; a Parquet file's decoded rows too (its pages may be compressed)."""
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            if p.suffix == ".parquet":
                data += json.dumps(pq.read_table(p).to_pylist(), default=repr).encode()
                data += repr(pq.read_metadata(p).metadata).encode()
            yield p, data


def _assert_no_token(where: str, *texts: Any, roots: Iterable[Path] = ()) -> None:
    for t in texts:
        for tok in TOKENS:
            assert tok not in str(t), f"{where}: a token in the output"
    for root in roots:
        for p, data in _all_files_text(Path(root)):
            for tok in TOKENS:
                assert tok.encode() not in data, f"{where}: token found in {p}"


def _cli_in_process(argv: List[str], env: Dict[str, str], monkeypatch) -> subprocess.CompletedProcess:
    import refcoco_edit.cli as rc

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rc.main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


# ==============================================================================================
# 1. pickles are never executed
# ==============================================================================================

@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_refs_pickle_payload_is_refused_in_every_protocol(tmp_path, protocol):
    from refcoco_edit.refcoco import load_refs

    marker = tmp_path / "pwned"
    refs = [{"ref_id": 1, "ann_id": 1, "image_id": 1, "split": "train", "category_id": 1,
             "sentences": [{"sent_id": 1, "sent": "x", "raw": "x", "tokens": _Payload(str(marker))}]}]
    p = tmp_path / "refs(unc).p"
    p.write_bytes(pickle.dumps(refs, protocol=protocol))
    with pytest.raises(InputError):
        load_refs(p)
    assert not marker.exists()


def _torch_evil(path: Path, marker: Path, wrap=lambda x: x) -> Path:
    """A torch checkpoint (zip format) whose pickle runs os.mkdir(marker) when executed."""
    torch = _torch()
    torch.save(wrap({"weight": _Payload(str(marker))}), str(path))
    # the payload is live: a plain torch.load would run it
    return path


def test_torch_payload_is_live_for_a_plain_load(tmp_path):
    torch = _torch()
    marker = tmp_path / "control"
    torch.load(str(_torch_evil(tmp_path / "c.pt", marker)), weights_only=False)
    assert marker.is_dir()


def test_sam_checkpoint_payload_is_refused(tmp_path):
    _torch()
    pytest.importorskip("segment_anything")
    from refcoco_edit.pipelines.masks import load_sam

    marker = tmp_path / "pwned"
    with pytest.raises(Exception) as info:
        load_sam(_torch_evil(tmp_path / "sam_vit_b_evil.pth", marker), "vit_b")
    assert not marker.exists()
    assert "weights" in str(info.value).lower() or "pickle" in str(info.value).lower() or "load" in str(info.value).lower()


def test_metric_weight_file_payload_is_refused(tmp_path):
    _torch()
    from refcoco_edit.models import ModelError, load_state_dict

    marker = tmp_path / "pwned"
    with pytest.raises(ModelError):
        load_state_dict(_torch_evil(tmp_path / "aesthetic.pth", marker), "--aesthetic-weights")
    assert not marker.exists()


def test_transformers_bin_payload_is_refused(tmp_path):
    _torch()
    pytest.importorskip("transformers")
    from support.tiny_models import tiny

    import shutil

    folder = tmp_path / "clip"
    shutil.copytree(tiny("clip"), folder)
    for f in list(folder.glob("*.safetensors")):
        f.unlink()
    marker = tmp_path / "pwned"
    _torch_evil(folder / "pytorch_model.bin", marker)
    from refcoco_edit.benchmark.metrics.model_based import ModelMetrics

    with pytest.raises(InputError, match="cannot be loaded") as info:  # exit 2, one line
        ModelMetrics(["clip_t"], {"clip_model": str(folder)}, device="cpu").load()
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_diffusers_bin_payload_is_refused(tmp_path):
    """A diffusers model folder (``--sd-model`` & co.) whose UNet weights are a pickle: the loader
    says the model cannot be loaded (one line) and the pickle does not run."""
    _torch()
    pytest.importorskip("diffusers")
    import shutil

    from support.tiny_models import tiny

    from refcoco_edit.models import ModelError, Runtime, load_diffusers

    sd = tmp_path / "sd"
    shutil.copytree(tiny("sd"), sd)
    for f in list((sd / "unet").glob("*.safetensors")):
        f.unlink()
    marker = tmp_path / "pwned"
    _torch_evil(sd / "unet" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(ModelError, match="cannot be loaded") as info:
        load_diffusers(str(sd), "sd", Runtime(device="cpu"))
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.fixture(scope="module")
def ip2p(tmp_path_factory):
    _torch()
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_referdiffusion import save_tiny_ip2p

    return save_tiny_ip2p(tmp_path_factory.mktemp("sec-ip2p"))


def test_referdiffusion_rem_weights_payload_is_refused(tmp_path, ip2p):
    torch = _torch()
    from refcoco_edit.benchmark.referdiffusion.model import REM_WEIGHTS, ReferDiffusion, ReferDiffusionConfig

    torch.manual_seed(0)
    model = ReferDiffusion.from_pretrained(ip2p, ReferDiffusionConfig(num_heads=4, image_feature_dim=16))
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    assert (ck / REM_WEIGHTS).is_file()
    marker = tmp_path / "pwned"
    _torch_evil(ck / REM_WEIGHTS, marker)
    with pytest.raises(Exception):
        ReferDiffusion.from_pretrained(ck)
    assert not marker.exists()
    # the score editor `referdiffusion:CHECKPOINT` says so as bad input (exit 2, one line)
    from refcoco_edit.benchmark.referdiffusion.infer import ReferDiffusionEditor

    with pytest.raises(InputError, match="cannot be loaded") as info:
        ReferDiffusionEditor(checkpoint=str(ck), device="cpu").load()
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_referdiffusion_resume_state_payload_is_refused(tmp_path, ip2p):
    _torch()
    from test_referdiffusion import _bench_samples, _train_cfg

    from refcoco_edit.benchmark.referdiffusion.train import train

    out = tmp_path / "run"
    train(_train_cfg(ip2p, out, stage="stage1", max_steps=2, checkpoint_every=2), _bench_samples(2))
    cks = sorted(p for p in out.rglob("*") if p.is_dir() and (p / "trainer_state.json").exists())
    assert cks, sorted(str(p) for p in out.rglob("*"))
    planted = []
    for f in sorted(cks[-1].iterdir()):
        if f.suffix in (".pkl", ".bin", ".pt") or f.name.startswith("random_states"):
            _torch_evil(f, tmp_path / f"pwned-{f.name}")
            planted.append(f.name)
    assert any(n.startswith("random_states") for n in planted), planted
    with pytest.raises(Exception):
        train(_train_cfg(ip2p, out, stage="stage1", max_steps=3, checkpoint_every=2, resume="latest"), _bench_samples(2))
    assert not list(tmp_path.glob("pwned-*"))


def test_no_unrestricted_unpickling_in_the_code():
    """Static guard: every torch.load passes weights_only=True, every np.load allow_pickle=False
    (explicitly); no pickle.load/loads, no joblib / cloudpickle / dill loads outside tests."""
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "build", "dist") or "egg-info" in str(rel) or rel.parts[0].startswith("."):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if str(rel) == "perf/bench_loader.py":  # the baseline of the loader benchmark: a bare pickle.load
            text = text.replace("pickle.load(", "")  # of the synthetic files it has just written itself
        for m in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in m.group(0):
                offenders.append(f"{rel}: {m.group(0)[:80]}")
        for m in re.finditer(r"\bnp\.load\(([^()]|\([^()]*\))*\)", text):
            if "allow_pickle=False" not in m.group(0):
                offenders.append(f"{rel}: {m.group(0)[:80]}")
        for pat in (r"\bpickle\.loads?\(", r"allow_pickle\s*=\s*True", r"\b(joblib|cloudpickle|dill)\.loads?\(",
                    r"\bpd\.read_pickle\("):
            for m in re.finditer(pat, text):
                offenders.append(f"{rel}: {m.group(0)}")
    assert not offenders, offenders


# ==============================================================================================
# 2. paths from data stay inside their folder
# ==============================================================================================

def test_split_name_with_a_path_is_refused_before_anything_is_written(tmp_path, demo_dir):
    import shutil

    root = tmp_path / "refer"
    shutil.copytree(demo_dir / "refcoco", root / "refcoco")
    p = root / "refcoco" / "refs(unc).p"
    refs = pickle.loads(p.read_bytes())
    for r in refs:
        r["split"] = "../../escaped-split"
    p.write_bytes(pickle.dumps(refs, protocol=2))
    w = tmp_path / "deep" / "er" / "W"
    proc = run_cli("build", "--out", str(w), "--refcoco", str(root), "--images", str(demo_dir / "images"),
                   "--num-images", "2", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "split" in proc.stderr and proc.stderr.count("\n") == 1
    assert not list(tmp_path.rglob("escaped-split*"))


def test_export_refuses_a_split_name_that_is_a_path(tmp_path, small_build):
    from refcoco_edit.export import write_export

    rows = _export_rows(small_build)
    rows[0]["split"] = "../escaped"
    with pytest.raises(InputError, match="split"):
        write_export(rows, tmp_path / "a" / "out")
    assert not list(tmp_path.rglob("escaped*"))


def test_import_export_refuses_unsafe_sample_ids(tmp_path, small_build):
    from refcoco_edit.export import import_export, write_export

    rows = _export_rows(small_build)
    rows[0]["sample_id"] = "../../x"
    write_export(rows, tmp_path / "evil-export")
    with pytest.raises(InputError, match="sample_id"):
        import_export(tmp_path / "evil-export", tmp_path / "W2")


def _plant_sample_id(w: Path, sid: str) -> Path:
    """Rewrite the workspace's first generated sample's id (as a hand-edited shard would hold it)."""
    import pyarrow as pa

    f = sorted((w / "generate").glob("shard-*.parquet"))[0]
    t = pq.read_table(f)
    ids = t.column("sample_id").to_pylist()
    ids[0] = sid
    t = t.set_column(t.schema.get_field_index("sample_id"), t.schema.field("sample_id"), pa.array(ids, pa.string()))
    pq.write_table(t, f)
    return f


def test_review_push_refuses_a_sample_id_that_is_a_path(tmp_path, label_studio, demo_dir, monkeypatch):  # noqa: F811
    from refcoco_edit.build import BuildConfig, build

    w = label_studio.files_root / "sec-push" / "sec-push-W"
    build(BuildConfig.of(out=str(w), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=1,
                      progress=False), log=lambda s: None)
    _plant_sample_id(w, "../../../sec-escaped")
    proc = _cli_in_process(["review", "push", "--workdir", str(w), "--url", label_studio.url,
                            "--document-root", str(label_studio.files_root)],
                           {"LABEL_STUDIO_API_KEY": label_studio.token}, monkeypatch)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sample_id" in proc.stderr
    assert not list(label_studio.files_root.rglob("sec-escaped*"))
    assert not (w / "review" / "media").exists() or not any((w / "review" / "media").rglob("*.png"))


def test_review_pull_ignores_a_task_whose_sample_id_is_a_path(tmp_path, label_studio, demo_dir, monkeypatch):  # noqa: F811
    from refcoco_edit.annotation import config as cfg
    from refcoco_edit.build import BuildConfig, build

    ls = label_studio
    w = ls.files_root / "sec-pull" / "sec-pull-W"
    build(BuildConfig.of(out=str(w), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=1,
                      progress=False), log=lambda s: None)
    env = {"LABEL_STUDIO_API_KEY": ls.token}
    proc = _cli_in_process(["review", "push", "--workdir", str(w), "--url", ls.url, "--document-root",
                            str(ls.files_root)], env, monkeypatch)
    assert proc.returncode == 0, proc.stderr
    pid = json.loads((w / "review" / "project.json").read_text())["project_id"]
    # a task that came from elsewhere (another tool, a hand import) with a hostile sample_id
    evil = "../../../../sec-pulled"

    data = dict(all_tasks(ls, pid)[0]["data"], **{cfg.KEY_SAMPLE_ID: evil, cfg.KEY_PROMPT: SCRIPT, cfg.KEY_PROMPT_HTML: SCRIPT})
    ls.api("POST", f"/api/projects/{pid}/import", [{"data": data}])
    tasks = all_tasks(ls, pid)
    assert evil in {t["data"][cfg.KEY_SAMPLE_ID] for t in tasks}
    spec = cfg.parse_label_config(ls.api("GET", f"/api/projects/{pid}")["label_config"])
    for t in tasks:
        ls.api("POST", f"/api/tasks/{t['id']}/annotations/?project={pid}", {
            "result": [{"id": "d", "from_name": spec.decision, "to_name": spec.source, "type": "choices",
                        "value": {"choices": [cfg.decision_value(0)]}}], "task": t["id"], "project": pid})
    proc = _cli_in_process(["review", "pull", "--workdir", str(w), "--url", ls.url], env, monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert "not in the workspace" in proc.stdout + proc.stderr
    table = pq.read_table(w / "review" / "reviews.parquet").to_pylist()
    assert evil not in {r["sample_id"] for r in table} and len(table) == len(tasks) - 1
    assert not list(ls.files_root.parent.rglob("sec-pulled*"))


def test_score_skips_unsafe_sample_ids_and_escapes_the_gallery(tmp_path, small_build):
    """One export with a hostile sample_id and hostile text: nothing is written outside RESULTS,
    and gallery.html / report.md show the text escaped."""
    from refcoco_edit.export import write_export

    rows = _export_rows(small_build)
    rows[0]["sample_id"] = "../../sec-score-escaped"
    r = rows[1]
    r["prompt"] = r["prompt"] + EVIL_TEXT  # the spans stay valid: text is only appended
    r["category"] = f'{r["category"]}"><img src=x onerror=alert(2)>'
    r["split"] = "val"
    write_export(rows, tmp_path / "export")
    out = tmp_path / "deep" / "er" / "R"
    proc = run_cli("score", "--model", "identity", "--data", str(tmp_path / "export"), "--out", str(out),
                   "--bootstrap", "10", "--no-plots", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["counts"]["skipped_by_reason"].get("bad_sample_id") == 1
    assert not list(tmp_path.rglob("sec-score-escaped*"))
    page = (out / "gallery.html").read_text()
    assert SCRIPT not in page and "<img src=x" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;dq&quot;" in page and ("&#x27;sq&#x27;" in page or "&#39;sq&#39;" in page) and "&amp; " in page
    md = (out / "report.md").read_text()
    assert SCRIPT not in md and "<img src=x" not in md


def test_dir_adapter_never_reads_outside_its_folder(tmp_path):
    from refcoco_edit.benchmark.editors.adapters import DirEditor
    from refcoco_edit.imageio import encode_png

    img = np.zeros((8, 8, 3), np.uint8)
    (tmp_path / "outside.png").write_bytes(encode_png(img + 200))
    d = tmp_path / "outs"
    d.mkdir()
    e = DirEditor(str(d))
    (got,) = e.edit([img], ["p"], [0], [{"sample_id": "../outside"}])
    assert not isinstance(got, np.ndarray) and got.reason == "missing_output"


def test_exemplar_names_never_leave_the_exemplar_dir(tmp_path):
    from refcoco_edit.imageio import encode_png
    from refcoco_edit.stages.exemplars import user_exemplar

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    (tmp_path / "secret.png").write_bytes(encode_png(rgba[..., :3]))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "a.png").write_bytes(encode_png(rgba[..., :3]))
    ex = tmp_path / "exemplars"
    (ex / "zebra").mkdir(parents=True)
    (ex / "zebra" / "z.png").write_bytes(encode_png(rgba[..., :3]))
    rng = np.random.default_rng(0)
    assert user_exemplar(str(ex), "a zebra", rng) is not None  # the folder works
    for target in ("../secret", "a ../secrets", "../secrets", str(tmp_path / "secret"), "zebra/../../secret", ".."):
        assert user_exemplar(str(ex), target, np.random.default_rng(0)) is None, target


# ==============================================================================================
# 3. Label Studio: data shown as HTML is escaped, the labeling config holds no data
# ==============================================================================================

def test_labeling_config_and_task_html_escape_hostile_prompts(small_build):
    import xml.etree.ElementTree as ET

    from refcoco_edit.annotation import config as cfg
    from refcoco_edit.annotation.push import task_data

    row = dict(_export_rows(small_build)[0])
    row["prompt"] = row["prompt"] + EVIL_TEXT
    row["category"] = SCRIPT
    data = task_data(row, {"source": "s.png", "candidates": ["c.png"] * len(row["candidates"])}, len(row["candidates"]),
                     lambda rel: "/data/local-files/?d=" + rel)
    xml = cfg.label_config(len(row["candidates"]))
    assert SCRIPT not in xml and "alert" not in xml
    root = ET.fromstring(xml)
    html_keys = {el.get("value", "").lstrip("$") for el in root.iter("HyperText")}
    assert html_keys == {cfg.KEY_PROMPT_HTML}  # the only data Label Studio renders as HTML
    shown = data[cfg.KEY_PROMPT_HTML]
    assert SCRIPT not in shown and "<b>bold</b>" not in shown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "&quot;dq&quot;" in shown and "&amp;" in shown
    # only our own elements (the wrapper and the two <mark>s) remain as tags
    assert set(re.findall(r"<\s*([a-zA-Z]+)", shown)) <= {"mark", "span"}
    spec = cfg.parse_label_config(xml)
    assert spec.num_candidates == len(row["candidates"])


# ==============================================================================================
# 4. tokens never show
# ==============================================================================================

class _EchoServer:
    """Answers every request with ``status`` and a body that echoes the request's headers (a
    careless server: the token comes back in the error)."""

    def __init__(self, status: int):
        server = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                body = json.dumps({"detail": f"error; you sent {dict(self.headers)}",
                                   "error": {"message": f"bad key {self.headers.get('Authorization')}"}}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.status = status
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _echo_key_reply(status: int):
    def handler(body):
        return Reply(status=status, json_body={"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}",
                                                         "type": "invalid_request_error", "param": None,
                                                         "code": "invalid_api_key"}})
    return handler


@pytest.mark.parametrize("failure", ["401", "500", "400", "down"])
def test_llm_key_never_shows_in_output_or_files(tmp_path, demo_dir, failure):
    w = tmp_path / "W"
    args = ["build", "--out", str(w), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"),
            "--num-images", "2", "--llm-model", "m", "--llm-max-retries", "0", "--llm-timeout", "10"]
    env = dict(TOKEN_ENV)
    if failure == "down":
        proc = run_cli(*args, "--llm-base-url", "http://127.0.0.1:9/v1", env=env)
        assert proc.returncode == 1
    else:
        with running() as srv:
            srv.script(_echo_key_reply(int(failure)))
            proc = run_cli(*args, "--llm-base-url", srv.base_url, env=env)
            assert srv.requests and srv.requests[-1]["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
        assert proc.returncode == {"401": 2, "500": 1, "400": 0}[failure], proc.stdout + proc.stderr
        if failure == "400":  # a per-sample refusal: quarantined with the server's message
            q = [r for f in (w / "quarantine").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
            assert q and all(r["reason"] == "llm_bad_request" for r in q)
    assert "Traceback" not in proc.stderr
    _assert_no_token(f"llm {failure}", proc.stdout, proc.stderr, roots=[w] if w.exists() else [])


@pytest.mark.parametrize("failure", ["401", "500", "down"])
def test_label_studio_token_never_shows_in_output_or_files(tmp_path, label_studio, small_build, failure,  # noqa: F811
                                                           monkeypatch):
    import shutil

    w = label_studio.files_root / f"sec-token-{failure}" / f"sec-token-{failure}-W"
    if not w.exists():
        shutil.copytree(small_build, w)
    srv = None
    if failure == "401":
        url = label_studio.url  # the real server refuses the made-up token
    elif failure == "500":
        srv = _EchoServer(500)
        url = srv.url
    else:
        url = "http://127.0.0.1:9"
    try:
        for action in ("push", "pull"):
            extra = ["--document-root", str(label_studio.files_root)] if action == "push" else []
            proc = _cli_in_process(["review", action, "--workdir", str(w), "--url", url, *extra], TOKEN_ENV, monkeypatch)
            assert proc.returncode == (2 if failure == "401" else 1), (action, proc.stdout, proc.stderr)
            assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
            _assert_no_token(f"label studio {failure} {action}", proc.stdout, proc.stderr, roots=[w])
    finally:
        if srv is not None:
            srv.close()


def test_tokens_in_the_environment_never_reach_build_or_score_outputs(tmp_path, small_build, demo_dir):
    out = tmp_path / "R"
    proc = run_cli("score", "--model", "identity", "--data", str(small_build), "--out", str(out), "--bootstrap", "10",
                   env=TOKEN_ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr
    _assert_no_token("score", proc.stdout, proc.stderr, roots=[out, small_build])
    # the build's own manifest and card, too (the fixture's build ran with no token; rebuild with them)
    w = tmp_path / "W"
    proc = run_cli("build", "--out", str(w), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"),
                   "--num-images", "2", env=TOKEN_ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr
    _assert_no_token("build", proc.stdout, proc.stderr, roots=[w])


def test_tokens_in_the_environment_never_reach_a_ray_build(tmp_path, demo_dir, ray_local, monkeypatch):
    """A build on the session's Ray instance with every token in the environment of the driver:
    none is in its log or in any file of the workspace."""
    from refcoco_edit.build import BuildConfig, build

    for k, v in TOKEN_ENV.items():
        monkeypatch.setenv(k, v)
    lines: List[str] = []
    w = tmp_path / "W"
    res = build(BuildConfig.of(out=str(w), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=2,
                            shard_size=2, executor="ray", workers=1, progress=False), log=lines.append)
    assert res.export["rows"] > 0
    _assert_no_token("ray build", *lines, roots=[w])
