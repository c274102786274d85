"""The A1111-compatible routes through FastAPI's TestClient: shapes, defaults, errors, guards."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from generate_fixtures import load_generator, tiny_lora_folder
from PIL import Image

from lorapipe.server.app import create_app
from lorapipe.server.settings import Limits, ServerSettings

SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def generator(tiny_model_dir, tmp_path_factory):
    return load_generator(tiny_model_dir, tiny_lora_folder(tmp_path_factory.mktemp("srv"), tiny_model_dir))


@pytest.fixture(scope="module")
def client(generator):
    with TestClient(create_app(ServerSettings(), generator=generator)) as client:
        yield client


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_shape_infotext_and_echo(client):
    body = {
        "prompt": "a toy <lora:dwjz_toy:0.7>",
        "negative_prompt": "blurry",
        "seed": 42,
        "batch_size": 2,
        "sampler_name": "Euler a",
        "unknown_key": 1,
        **SMALL,
    }
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"images", "parameters", "info"}
    assert len(data["images"]) == 2 and not data["images"][0].startswith("data:")
    image = _png(data["images"][0])
    info = json.loads(data["info"])
    assert image.info["parameters"] == info["infotexts"][0]
    assert info["seed"] == 42 and info["all_seeds"] == [42, 43]
    assert info["sampler_name"] == "Euler a" and info["extra_generation_params"]["Lora hashes"].startswith("dwjz_toy: ")
    assert data["parameters"]["seed"] == 42 and data["parameters"]["cfg_scale"] == 7.0  # echo with defaults
    assert "unknown_key" not in data["parameters"]
    assert list(info)[:4] == ["prompt", "all_prompts", "negative_prompt", "all_negative_prompts"]


def test_defaults_follow_a1111_api(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "toy", "width": 64, "height": 64, "steps": 1})
    params = response.json()["parameters"]
    assert params["sampler_index"] == "Euler" and params["cfg_scale"] == 7.0 and params["seed"] == -1
    assert json.loads(response.json()["info"])["sampler_name"] == "Euler"


def test_unknown_lora_is_a_warning_in_info(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "toy <lora:nope:1> <lora:..%2fetc:1>", **SMALL})
    assert response.status_code == 200
    assert "Networks not found: nope" in json.loads(response.json()["info"])["comments"]


def test_bad_input_gets_a1111_and_fastapi_error_shapes_and_worker_survives(client):
    unknown = client.post("/sdapi/v1/txt2img", json={"sampler_name": "Bogus", **SMALL})
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "HTTPException", "detail": "Sampler not found", "body": "", "errors": ""}
    malformed = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and isinstance(malformed.json()["detail"], list)
    wrong_type = client.post("/sdapi/v1/txt2img", json={"steps": "many"})
    assert wrong_type.status_code == 422 and wrong_type.json()["detail"][0]["loc"] == ["body", "steps"]
    for field, value in (("steps", 10_000), ("width", 100_000), ("batch_size", 500), ("width", 65)):
        refused = client.post("/sdapi/v1/txt2img", json={**SMALL, field: value})
        assert refused.status_code == 422, (field, value)
    script = client.post("/sdapi/v1/txt2img", json={"script_name": "x/y/z plot", **SMALL})
    assert script.status_code == 422 and script.json()["detail"] == "Script 'x/y/z plot' not found"
    assert client.post("/sdapi/v1/img2img", json=SMALL).json()["detail"] == "Init image not found"
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "still works", **SMALL}).status_code == 200


def test_bad_values_answer_4xx_naming_the_field_and_never_reach_the_worker(client):
    def refused(route, body, field, status=422):
        response = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
        assert response.status_code == status, (body, response.text)
        assert field in json.dumps(response.json()), (field, response.text)

    refused("/sdapi/v1/txt2img", {**SMALL, "cfg_scale": float("nan")}, "cfg_scale")
    refused("/sdapi/v1/txt2img", {**SMALL, "seed": 2**70}, "seed")
    refused("/sdapi/v1/txt2img", {**SMALL, "subseed": -5}, "subseed")
    refused("/sdapi/v1/img2img", {**SMALL, "init_images": ["%%%not base64"]}, "init_images[0]")
    refused(
        "/sdapi/v1/img2img",
        {**SMALL, "init_images": [base64.b64encode(b"GIF89a" + b"x" * 20).decode()]},
        "init_images[0]",
    )
    refused("/sdapi/v1/png-info", {"image": "%%%"}, "image")
    refused("/sdapi/v1/options", {"sd_model_checkpoint": "nope.safetensors"}, "sd_model_checkpoint")
    many = " ".join(f"<lora:missing{i}:1>" for i in range(17))
    refused("/sdapi/v1/txt2img", {**SMALL, "prompt": many}, "at most 16")
    # 500 tags of one LoRA are one LoRA: merged, applied once, answered at once.
    repeated = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 1, "prompt": "<lora:toy:0.002>" * 500})
    assert repeated.status_code == 200
    assert 'Lora hashes: "toy: ' in json.loads(repeated.json()["info"])["infotexts"][0]


def test_a_bad_lora_file_is_skipped_and_reported(client, generator):
    bad = generator.registry.root / "broken.safetensors"
    bad.write_bytes(b"\x80\x04\x95pickle, not safetensors" * 10)
    try:
        response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "x <lora:broken:1> <lora:toy:1>"})
        assert response.status_code == 200
        info = json.loads(response.json()["info"])
        assert "LoRA broken: not applied: the file was left out of the catalogue" in info["comments"]
        assert 'Lora hashes: "toy: ' in info["infotexts"][0]
        assert "broken" not in {entry["name"] for entry in client.get("/sdapi/v1/loras").json()}
    finally:
        bad.unlink()
        generator.registry.refresh()


def test_img2img_accepts_data_uri_and_blanks_init_images_in_echo(client):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = client.post("/sdapi/v1/img2img", json={"init_images": [data_uri], "denoising_strength": 0.5, **SMALL})
    assert response.status_code == 200
    assert response.json()["parameters"]["init_images"] is None
    assert "Denoising strength: 0.5" in json.loads(response.json()["info"])["infotexts"][0]
    bad = client.post("/sdapi/v1/img2img", json={"init_images": ["not-an-image"], **SMALL})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("init_images[0]: not a decodable image")
    cropped = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [data_uri], "resize_mode": 1})
    assert cropped.status_code == 200
    latent = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [data_uri], "resize_mode": 3})
    assert latent.status_code == 422 and "resize_mode" in json.dumps(latent.json())
    # 1 step at strength 0.75 is int(0.75) = 0 steps in diffusers; it still runs one, not a 500.
    one_step = client.post(
        "/sdapi/v1/img2img", json={**SMALL, "init_images": [data_uri], "steps": 1, "denoising_strength": 0.75}
    )
    assert one_step.status_code == 200 and len(one_step.json()["images"]) == 1


def test_png_info_round_trip(client):
    image_b64 = client.post("/sdapi/v1/txt2img", json={"prompt": "a, b: c", "seed": 5, **SMALL}).json()["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": image_b64}).json()
    assert info["info"].startswith("a, b: c\nSteps: 2")
    assert info["parameters"]["Prompt"] == "a, b: c" and info["parameters"]["Seed"] == "5"
    assert info["parameters"]["Size-1"] == "64"


def test_catalogue_routes(client, generator):
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["title"] == generator.model.title and len(models[0]["hash"]) == 10
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == models[0]["title"]
    assert options["sd_checkpoint_hash"] == models[0]["sha256"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": models[0]["title"]}).json() is None
    missing = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other.safetensors"})
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("sd_model_checkpoint: model 'other.safetensors' not found")
    loras = {entry["name"]: entry for entry in client.get("/sdapi/v1/loras").json()}
    assert set(loras) == {"toy", "style"} and loras["toy"]["alias"] == "dwjz_toy"
    assert not loras["toy"]["path"].startswith("/")  # never leak the server's filesystem layout
    assert client.post("/sdapi/v1/refresh-loras").json() is None
    assert "DPM++ 2M" in {s["name"] for s in client.get("/sdapi/v1/samplers").json()}
    assert "karras" in {s["name"] for s in client.get("/sdapi/v1/schedulers").json()}
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    memory = client.get("/sdapi/v1/memory").json()
    assert memory["ram"]["total"] > 0 and "cuda" in memory
    assert client.get("/internal/ping").json() == {}
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    assert client.post("/sdapi/v1/interrupt").json() == {}
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes and len(modes) == 6
    samplers = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert samplers["LMS"]["aliases"] == ["k_lms"] and "DPM++ 3M SDE" in samplers
    assert client.get("/nope").status_code == 404


def test_auth_on_every_route_but_ping(generator):
    app = create_app(ServerSettings(api_auth=(("alice", "s3cret:x"),)), generator=generator)
    with TestClient(app) as client:
        assert client.get("/internal/ping").status_code == 200
        for path in ("/sdapi/v1/sd-models", "/sdapi/v1/loras", "/docs", "/openapi.json", "/ui/nope.js"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Basic")
        # The page's own fetches are refused without a Basic challenge (no browser dialog: the page signs in itself).
        page = client.get("/sdapi/v1/loras", headers={"X-Requested-With": "XMLHttpRequest"}, auth=("alice", "no"))
        assert page.status_code == 401 and "www-authenticate" not in page.headers
        assert page.json()["detail"] == "Incorrect username or password"
        # The page itself (HTML, script, style: no data) loads, so it can show its sign-in form.
        for path in ("/ui/", "/ui/app.js", "/ui/auth.js", "/ui/style.css"):
            assert client.get(path).status_code == 200, path
        assert (
            client.get("/sdapi/v1/loras", auth=("alice", "wrong")).json()["detail"] == "Incorrect username or password"
        )
        assert client.get("/sdapi/v1/loras", auth=("alice", "s3cret:x")).status_code == 200


def test_listen_requires_auth_and_cors_is_off_by_default(generator):
    from lorapipe.errors import ConfigError

    with pytest.raises(ConfigError, match="--api-auth"):
        ServerSettings(host="0.0.0.0")
    origin = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(ServerSettings(), generator=generator)) as client:
        preflight = client.options("/sdapi/v1/txt2img", headers=origin)
        assert "access-control-allow-origin" not in preflight.headers
    listed = ServerSettings(cors_origins=("http://good.example",), api_auth=(("u", "p"),))
    with TestClient(create_app(listed, generator=generator)) as client:
        good = client.options("/sdapi/v1/txt2img", headers={**origin, "Origin": "http://good.example"})
        assert good.status_code == 200
        assert good.headers["access-control-allow-origin"] == "http://good.example"
        evil = client.options("/sdapi/v1/txt2img", headers=origin)
        assert evil.headers.get("access-control-allow-origin") != "http://evil.example"


def test_body_and_pixel_caps(generator):
    settings = ServerSettings(limits=Limits(max_body_bytes=2000, max_pixels=64 * 64))
    with TestClient(create_app(settings, generator=generator)) as client:
        big = client.post("/sdapi/v1/txt2img", json={"prompt": "x" * 5000})
        assert big.status_code == 413
        assert client.post("/sdapi/v1/txt2img", json={"width": 128, "height": 128, "steps": 1}).status_code == 422
        buffer = io.BytesIO()
        Image.new("L", (100, 100)).save(buffer, format="PNG", optimize=True)
        huge = base64.b64encode(buffer.getvalue()).decode()
        assert client.post("/sdapi/v1/png-info", json={"image": huge}).status_code == 422


def test_txt2img_hires_fix(client):
    body = {
        "prompt": "a toy <lora:toy:0.6>",
        "seed": 8,
        "enable_hr": True,
        "hr_scale": 1.5,
        "hr_upscaler": "Latent (nearest-exact)",
        "denoising_strength": 0.6,
        "hr_second_pass_steps": 3,
        **SMALL,
    }
    first = client.post("/sdapi/v1/txt2img", json=body)
    assert first.status_code == 200
    image = _png(first.json()["images"][0])
    assert image.size == (96, 96)
    info = json.loads(first.json()["info"])
    assert (info["width"], info["height"], info["denoising_strength"]) == (64, 64, 0.6)  # A1111: first-pass size
    extra = info["extra_generation_params"]
    assert extra["Hires upscale"] == 1.5 and extra["Hires upscaler"] == "Latent (nearest-exact)"
    assert extra["Hires steps"] == 3 and "Lora hashes" in extra
    assert "Size: 64x64" in info["infotexts"][0] and "Hires upscale: 1.5, Hires steps: 3" in info["infotexts"][0]
    again = _png(client.post("/sdapi/v1/txt2img", json=body).json()["images"][0])
    assert again.tobytes() == image.tobytes()
    lms = client.post(
        "/sdapi/v1/txt2img",
        json={**SMALL, "sampler_name": "k_lms", "enable_hr": True, "hr_resize_x": 80, "hr_upscaler": "Lanczos"},
    )
    assert lms.status_code == 200 and _png(lms.json()["images"][0]).size == (80, 80)
    assert "Hires resize: 80x0" in json.loads(lms.json()["info"])["infotexts"][0]


def test_hires_fix_errors_name_the_field(client, generator):
    unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_upscaler": "4x-UltraSharp"})
    assert unknown.status_code == 422
    detail = unknown.json()["detail"][0]
    assert detail["loc"] == ["body", "hr_upscaler"] and "4x-UltraSharp" in detail["msg"]
    unknown_sampler = client.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_sampler_name": "Nope"})
    assert unknown_sampler.status_code == 404
    settings = ServerSettings(limits=Limits(max_pixels=96 * 96, max_side=128))
    with TestClient(create_app(settings, generator=generator)) as capped:
        too_big = capped.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 2})
        assert too_big.status_code == 422 and too_big.json()["detail"][0]["loc"] == ["body", "hr_scale"]
        too_wide = capped.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_resize_x": 256})
        assert too_wide.status_code == 422 and too_wide.json()["detail"][0]["loc"] == ["body", "hr_resize_x"]
        assert (
            capped.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 1.5, "steps": 1}).status_code
            == 200
        )
