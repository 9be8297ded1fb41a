"""Draw a bundled workflow's nodes and links into the .jpg that ComfyUI's template browser shows beside it.

Usage: python scripts/render_template_preview.py workflows/wan21_t2v_tandem.json  (writes the .jpg next to it).
Rendering from the JSON keeps the picture in step with the template whenever the template changes.
"""
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, MARGIN, TITLE_H, SLOT_H = 960, 24, 30, 20
LINK_COLORS = {"CLIP": "#FFD500", "CONDITIONING": "#FFA931", "LATENT": "#FF9CF9", "VAE": "#FF6E6E",
               "IMAGE": "#64B5F6", "VIDEO": "#64B5F6", "TANDEM_GROUP": "#7FD6A4", "TANDEM_MODEL": "#B39DDB"}


def render(workflow: dict) -> Image.Image:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    left = min(n["pos"][0] for n in nodes.values()) - MARGIN
    top = min(n["pos"][1] for n in nodes.values()) - TITLE_H - MARGIN
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values()) + MARGIN
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values()) + MARGIN
    scale = WIDTH / (right - left)
    image = Image.new("RGB", (WIDTH, round((bottom - top) * scale)), "#1e1e1e")
    draw = ImageDraw.Draw(image)
    title_font = ImageFont.load_default(size=max(10, round(15 * scale * 1.4)))
    body_font = ImageFont.load_default(size=max(9, round(12 * scale * 1.4)))

    def xy(x: float, y: float) -> tuple[int, int]:
        return round((x - left) * scale), round((y - top) * scale)

    for _, src, src_slot, dst, dst_slot, kind in workflow["links"]:   # under the nodes, curved as LiteGraph does
        (sx, sy), (sw, _) = nodes[src]["pos"], nodes[src]["size"]
        (dx, dy) = nodes[dst]["pos"]
        start, end = (sx + sw, sy + 14 + SLOT_H * src_slot), (dx, dy + 14 + SLOT_H * dst_slot)
        bend = 0.25 * ((end[0] - start[0]) ** 2 + (end[1] - start[1]) ** 2) ** 0.5
        curve = [_bezier(start, (start[0] + bend, start[1]), (end[0] - bend, end[1]), end, t / 32) for t in range(33)]
        draw.line([xy(*p) for p in curve], fill=LINK_COLORS.get(kind, "#aaaaaa"), width=3)
    for node in nodes.values():
        (x, y), (w, h) = node["pos"], node["size"]
        draw.rounded_rectangle([xy(x, y - TITLE_H), xy(x + w, y + h)], radius=6, fill=node.get("bgcolor", "#353535"),
                               outline="#555555")
        draw.rounded_rectangle([xy(x, y - TITLE_H), xy(x + w, y)], radius=6, fill=node.get("color", "#2a2a2a"))
        draw.text(xy(x + 10, y - TITLE_H + 7), node.get("title", node["type"]), fill="#e0e0e0", font=title_font)
        values = [str(v) for v in node.get("widgets_values", []) if v not in ("randomize", "fixed")]
        slots = max(len(node["inputs"]), len(node["outputs"]))
        for i, text in enumerate(values[:4]):
            text = text if len(text) <= 44 else text[:41] + "..."
            draw.text(xy(x + 10, y + 8 + SLOT_H * (slots + i)), text, fill="#9a9a9a", font=body_font)

        for slot, side in ((node["inputs"], x), (node["outputs"], x + w)):
            for i, entry in enumerate(slot):
                cx, cy = xy(side, y + 14 + SLOT_H * i)
                draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=LINK_COLORS.get(entry["type"], "#aaaaaa"))
    return image


def _bezier(p0, p1, p2, p3, t: float) -> tuple[float, float]:
    return tuple((1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t ** 2 * c + t ** 3 * d
                 for a, b, c, d in zip(p0, p1, p2, p3))


if __name__ == "__main__":
    for name in sys.argv[1:]:
        path = Path(name)
        render(json.loads(path.read_text())).save(path.with_suffix(".jpg"), quality=85, optimize=True)
        print(f"{path.with_suffix('.jpg')}: {path.with_suffix('.jpg').stat().st_size / 1e3:.0f} KB")
