"""glide serve in a real headless Chromium (Debian's package) driven by Playwright: type a caption
and see the image; brush a mask and inpaint; redraw an image; an invalid input shows an error.
Screenshots of each tab go to $GLIDE_TEST_ARTIFACTS (default: test-artifacts/) for a person to look at."""

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="glide serve needs the [serve] extra (gradio)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (the [test] extra)")

ARTIFACTS = Path(os.environ.get("GLIDE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
TIMEOUT_MS = 180_000  # one generation on a busy 2-core CPU, with room


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        # Software WebGL, which the image editor's canvas needs, on machines without a GPU.
        b = p.chromium.launch(
            executable_path=path, args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, serve):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    console: list[str] = []  # written beside the screenshots when a test fails to find its image
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.console_lines = console
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(serve.url)
    page.wait_for_selector("#t2i-prompt textarea")
    yield page
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"serve-{name}.png"), full_page=True)


def result_png(page, prefix: str) -> Image.Image:
    """The first image of a tab's gallery, fetched from the URL the page shows."""
    src = page.get_attribute(f"#{prefix}-gallery img", "src")
    response = page.request.get(src)
    assert response.ok, src
    return Image.open(io.BytesIO(response.body()))


def scene() -> Image.Image:
    a = np.full((128, 128, 3), 200, np.uint8)
    a[10:50, 10:50] = (0, 0, 255)  # a blue square: found on screen to map image pixels to the page
    return Image.fromarray(a)


def test_type_a_caption_and_see_the_image(page):
    fill(page, "#t2i-prompt textarea", "a large red circle on a white background")
    page.click("#t2i-generate")
    page.wait_for_selector("#t2i-gallery img")
    image = result_png(page, "t2i")
    assert image.format == "PNG" and image.size == (128, 128)
    assert image.text["prompt"] == "a large red circle on a white background"
    settings = json.loads(image.text["settings"])
    assert settings["base_model"].startswith("shapes-base") and settings["upsample_model"] == "shapes-upsample"
    page.wait_for_selector("#t2i-info code")
    assert "glide sample" in page.inner_text("#t2i-info") and "seed" in page.inner_text("#t2i-info")
    shot(page, "text2im")


def _upload_to_editor(page, image: Path, tmp_path) -> tuple[float, float, float]:
    """Upload ``image`` into the inpainting editor and return where it is drawn (``_image_on_screen``).
    An upload made while the tab is still mounting can be dropped by the editor: tried once more."""
    page.locator("#inp-editor").wait_for(state="visible")
    page.set_input_files("#inp-editor input[type=file]", str(image))
    try:
        return _image_on_screen(page, tmp_path, looks=30)
    except AssertionError:
        page.set_input_files("#inp-editor input[type=file]", str(image))
        return _image_on_screen(page, tmp_path)


def _image_on_screen(page, tmp_path, looks: int = 60) -> tuple[float, float, float]:
    """(left, top, scale) of the editor's image on the page, from where its blue square is drawn,
    once two looks half a second apart agree (the upload is drawn, and its layout has settled)."""
    path, last = tmp_path / "editor.png", None
    for _ in range(looks):
        box = page.locator("#inp-editor").bounding_box()
        page.screenshot(path=str(path), clip=box)
        a = np.asarray(Image.open(path).convert("RGB")).astype(int)
        ys, xs = np.nonzero((a[..., 2] > 230) & (a[..., 0] < 30) & (a[..., 1] < 30))
        if len(xs):
            scale = (xs.max() + 1 - xs.min()) / 40
            now = (box["x"] + xs.min() - 10 * scale, box["y"] + ys.min() - 10 * scale, scale)
            if now == last:
                return now
            last = now
        page.wait_for_timeout(500)
    shot(page, "inpaint-no-image")
    (ARTIFACTS / "serve-inpaint-no-image.console.txt").write_text("\n".join(page.console_lines))
    raise AssertionError(f"the uploaded image is not on the page after {looks / 2:.0f} s (last seen: {last})")


def quick(page, prefix: str, steps: str = "10") -> None:
    """Fewer base steps and one candidate, for the tests about the page rather than the defaults."""
    page.click(f"#{prefix}-settings")
    fill(page, f"#{prefix}-steps input, #{prefix}-steps textarea", steps)
    if page.locator(f"#{prefix}-best-of").count():
        fill(page, f"#{prefix}-best-of input", "1")


def fill(page, selector: str, text: str) -> None:
    """Type into a field and leave it, again if the page redrew it meanwhile (an accordion that has
    just opened mounts its fields afresh), so its value is the page's state before the next click."""
    field = page.locator(selector).first
    for _ in range(10):
        field.fill(text)
        field.press("Tab")
        page.wait_for_timeout(300)
        if field.input_value() == text:
            return
    raise AssertionError(f"{selector} does not keep {text!r} (it shows {field.input_value()!r})")


def test_brush_a_mask_and_inpaint(page, tmp_path):
    page.get_by_role("tab", name="Inpainting").click()
    (tmp_path / "scene.png").write_bytes(_png(scene()))
    left, top, scale = _upload_to_editor(page, tmp_path / "scene.png", tmp_path)
    for y in range(84, 116, 8):  # strokes over x, y in [80, 116] of the 128 px image
        page.mouse.move(left + 84 * scale, top + y * scale)
        page.mouse.down()
        page.mouse.move(left + 112 * scale, top + y * scale, steps=3)
        page.mouse.up()
    fill(page, "#inp-prompt input, #inp-prompt textarea", "a red circle")
    quick(page, "inp")
    page.click("#inp-generate")
    page.wait_for_selector("#inp-gallery img")
    out = np.asarray(result_png(page, "inp").convert("RGB")).astype(int)
    source = np.asarray(scene()).astype(int)
    far = np.ones((128, 128), bool)
    far[64:, 64:] = False  # the brush (12 px wide) stays inside the bottom-right quarter
    np.testing.assert_array_equal(out[far], source[far])
    assert (np.abs(out[96:104, 96:104] - source[96:104, 96:104]).max(-1) > 0).mean() > 0.5  # repainted
    shot(page, "inpaint")


def test_redraw_an_image(page, tmp_path):
    page.get_by_role("tab", name="Image → image").click()
    (tmp_path / "scene.png").write_bytes(_png(scene()))
    page.set_input_files("#i2i-image input[type=file]", str(tmp_path / "scene.png"))
    fill(page, "#i2i-prompt input, #i2i-prompt textarea", "a blue square")
    quick(page, "i2i", "20")
    page.click("#i2i-generate")
    page.wait_for_selector("#i2i-gallery img")
    image = result_png(page, "i2i")
    assert image.size == (128, 128) and json.loads(image.text["settings"])["strength"] == 0.6
    shot(page, "img2img")


def test_an_invalid_input_shows_an_error(page):
    fill(page, "#t2i-prompt textarea", "a red circle")
    quick(page, "t2i", "-5")
    page.click("#t2i-generate")
    error = page.get_by_text("base_steps: not a respacing").first
    error.or_(page.locator("#t2i-gallery img")).first.wait_for()  # an image here would be the bug
    shot(page, "error")
    assert error.is_visible(), "the page made an image from base steps -5 instead of an error"
    # The server is still fine: the same page generates once the input is corrected.
    fill(page, "#t2i-steps input, #t2i-steps textarea", "10")
    page.click("#t2i-generate")
    page.wait_for_selector("#t2i-gallery img")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
