"""Grasp geometry of the LIBERO object categories the scripted expert picks (`vla.expert`), measured from their
collision geoms: where the gripper closes relative to an object's `<name>_pos`, and its extent above and below it."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectSpec:
    """Geometry of one object category relative to its `<name>_pos` (metres; the gripper points down). The gripper
    site closes `radius` out from the position (on a rim wall, fingers across it) and `height` above it; `top`:
    its top above its position (where a held object is released); `bottom`: its base below its position.
    `confined_radius`: the gripper site's distance from the axis when the object starts in a drawer: closer in, so
    the outer open finger stays inside the drawer's walls (the closing fingers slide the object over). With
    `facets`, the grasp turns to the middle of the nearest collision facet of the wall (a seam slips); with
    `align`, a centre grasp closes across the object's local y axis (its short side). `centre`: the axis of the
    rim in the object's frame (xy), where it is not the position (a mug's handle shifts its origin). `grip`: a fixed
    grasp instead, (x, y, closing direction in degrees) in the object's frame, at `height` (a handle)."""

    radius: float = 0.0
    height: float = 0.02
    top: float = 0.02
    bottom: float = 0.0
    facets: tuple[float, ...] = ()  # yaws (degrees, object frame) of wall facets to grasp at the middle of
    align: bool = False
    confined_radius: float | None = None  # `radius` when the object starts inside a drawer (walls close around it)
    centre: tuple[float, float] = (0.0, 0.0)
    grip: tuple[float, float, float] | None = None


# Measured from LIBERO's collision geoms: the bowl's upper wall is a ring of 18 flared boxes ~4.7 cm from its axis
# (centred at the yaws below; the one at 77 degrees is narrow), its rim ~5 cm above its base; it weighs 5.6 g.
BOWL_FACETS = (2.3, 22.9, 43.5, 64.0, 90.1, 111.5, 132.3, 153.4, 174.4, -165.2, -144.3, -123.1, -102.4, -81.5, -60.4,
               -39.6, -18.2)  # fmt: skip
_CAN = ObjectSpec(height=0.0, top=0.038, bottom=0.038)
_BOX = ObjectSpec(height=0.0, top=0.009, bottom=0.009, align=True)
OBJECT_SPECS = {  # libero_object's positions are the objects' centres (their collision boxes span +-top/bottom)
    "akita_black_bowl": ObjectSpec(radius=0.047, height=0.025, top=0.04, facets=BOWL_FACETS, confined_radius=0.03),
    "plate": ObjectSpec(top=0.012),
    "basket": ObjectSpec(top=0.146),
    "alphabet_soup": _CAN,
    "tomato_sauce": _CAN,
    "cream_cheese": _BOX,
    "butter": _BOX,
    "chocolate_pudding": ObjectSpec(height=0.0, top=0.013, bottom=0.013, align=True),
    "salad_dressing": ObjectSpec(height=0.048, top=0.073, bottom=0.073, align=True),
    "ketchup": ObjectSpec(height=0.03, top=0.072, bottom=0.072, align=True),
    "bbq_sauce": ObjectSpec(height=0.02, top=0.052, bottom=0.055, align=True),
    "milk": ObjectSpec(height=0.02, top=0.061, bottom=0.07),
    "orange_juice": ObjectSpec(height=0.02, top=0.061, bottom=0.07),
    "wine_bottle": ObjectSpec(height=0.125, top=0.158),  # position at its base; grasped by the neck
}
# Mugs (position at the base): a ring of wall boxes around an axis off the origin, grasped ~2.5 cm below the rim on
# the facet nearest the robot, never on those next to the handle (the outer finger would land on it). The porcelain
# mug's 7 facets are 4.3 cm wide, 4.1 cm from its axis at (0.015, 0), rim 0.108 high, handle at 180 degrees; the
# white-yellow mug's 19 facets are 4.25 cm from its axis at (-0.018, 0), rim 0.103 high, handle at 0 degrees.
OBJECT_SPECS["porcelain_mug"] = ObjectSpec(
    radius=0.041, height=0.083, top=0.108, facets=(-102.6, -49.9, -0.7, 51.3, 99.2), centre=(0.0152, -0.0009)
)
OBJECT_SPECS["white_yellow_mug"] = ObjectSpec(
    radius=0.0425, height=0.078, top=0.103, centre=(-0.0182, 0.0),
    facets=(-173.9, -154.5, -135.8, -116.3, -95.4, -75.7, -57.4, 58.8, 77.1, 96.8, 115.0, 130.8, 148.6, 166.6),
)  # fmt: skip
# A moka pot's position is its centre (body 13.3 cm tall, 6.6 cm across its local y, 8 cm across x): its handle, a
# plate 1.3 cm thick (x) from y = 5.4 to 9.1 cm and from its base to 5.6 cm above the centre, joins the body at its top
# (a finger going down along the body hits that joint), so it is held by that plate, fingers closing across x.
OBJECT_SPECS["moka_pot"] = ObjectSpec(height=0.02, top=0.067, bottom=0.066, grip=(0.0, 0.0725, 0.0))
DEFAULT_SPEC = ObjectSpec()


def object_spec(name: str) -> ObjectSpec:
    """The spec of an instance name such as `akita_black_bowl_1` (its category is the name without `_<n>`)."""
    return OBJECT_SPECS.get(re.sub(r"_\d+$", "", name), DEFAULT_SPEC)
