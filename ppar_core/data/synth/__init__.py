"""Built-in synthetic street-scene domains: procedural layouts rendered in per-domain styles (the public API).

A `Layout` is the style-independent scene: a pinhole camera looks down a straight street (road with lane marks,
sidewalks, buildings with windows, walls, fences, parks, street furniture, traffic and people), drawn by the
painter's algorithm from far to near into one map of part ids. Every part carries a class, a base colour, a light
kind and a facing, so the label map, the depth map and the base colours all come from the same pixels: labels and
image agree exactly at every object edge. `render` adds the domain's appearance.

Modules, each importing only those below it:

- `generate`: assembles layouts (`generate_layout`), draws samples (`make_sample`), writes domain folders
  (`write_domains`);
- `styles`: the appearance: `Style`, the built-in styles, style files and `render`;
- `objects`: vehicles, trams, people and two-wheelers;
- `street`: the static street: road, background, roadside buildings, parks, walls and fences, furniture;
- `scene`: the `Scene` canvas of part ids, its camera and drawing primitives;
- `layout`: the `Layout` dataclass and the shared codes (light kinds, facings, class ids, `SKY_DEPTH`).

Randomness: the layout of sample `index` in `domain` is drawn from SeedSequence(seed, crc32(domain), index, 0) and
its appearance from (..., 1). So layouts never repeat across domains, yet every domain draws from one layout
distribution, and the same (domain, index, size, seed) is always byte-identical.
"""

from ppar_core.data.synth.generate import generate_layout, make_sample, write_domains
from ppar_core.data.synth.layout import SKY_DEPTH
from ppar_core.data.synth.styles import BUILTIN_STYLES, DEFAULT_DOMAINS, Style, load_style_file, render

__all__ = [
    "BUILTIN_STYLES",
    "DEFAULT_DOMAINS",
    "SKY_DEPTH",
    "Style",
    "generate_layout",
    "load_style_file",
    "make_sample",
    "render",
    "write_domains",
]
