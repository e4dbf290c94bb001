"""nbval with a stated tolerance: a printed decimal may differ by one unit in its last digit.

A chapter's untrained computations (a forward pass of freshly initialised weights, a loss on an
encoded batch) give the same numbers on every machine up to the last bits of float32: the
matrix-product kernels TensorFlow picks depend on the CPU (its instruction set and cache
sizes, see the Performance page). Printed to three decimals, such a number can still round
the other way. So the comparison of stored and fresh outputs allows each *decimal* number
(one with a decimal point or an exponent) to differ by one unit in its last printed digit,
at the same printed precision. Everything else must match exactly: the text around the
numbers, every integer (counts, sizes, epochs) and the number of decimals.

Outputs that depend on trained weights differ by far more than that on another machine; those
cells carry the tag `nbval-ignore-output`, and what they must show is checked in the cell or
by a test that repeats the run on the same machine.
"""

from __future__ import annotations

import re
from collections import defaultdict
from decimal import Decimal

#: A decimal number as printed: `0.707`, `-3.2`, `5e-06`, `1.5E+03` (integers are not matched:
#: they must be equal).
DECIMAL_NUMBER = re.compile(r"(?<![\w.])-?(?:\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)(?![\w.])")


def last_digit_unit(printed: str) -> Decimal:
    """The value of one unit in the last printed digit: `0.707` -> 0.001, `5e-06` -> 1e-06."""
    return Decimal(1).scaleb(Decimal(printed).as_tuple().exponent)


def numbers_agree(reference: str, fresh: str) -> bool:
    """True when `fresh` equals `reference` up to one unit in the last digit of each decimal.

    Args:
        reference: The stored output.
        fresh: The output of this run.

    Returns:
        Whether the text between the numbers is identical, both hold the same decimals at the
        same printed precision, and each pair differs by at most one unit in its last digit.
    """
    if DECIMAL_NUMBER.split(reference) != DECIMAL_NUMBER.split(fresh):
        return False
    for stored, new in zip(
        DECIMAL_NUMBER.findall(reference), DECIMAL_NUMBER.findall(fresh), strict=True
    ):
        unit = last_digit_unit(stored)
        if last_digit_unit(new) != unit or abs(Decimal(stored) - Decimal(new)) > unit:
            return False
    return True


def _slots(outputs, skip: tuple[str, ...]) -> dict[str, list[tuple[dict, str]]]:
    """Where each compared string sits, grouped and ordered as nbval flattens them: streams by
    their name, rich outputs by MIME type."""
    slots = defaultdict(list)
    for output in outputs:
        if output.get("output_type") == "stream":
            slots[output["name"]].append((output, "text"))
            continue
        for key, value in output.items():
            if key == "data":
                for mime in value:
                    if mime not in skip:
                        slots[mime].append((value, mime))
            elif key not in skip:
                slots[key].append((output, key))
    return slots


def install() -> None:
    """Makes nbval's output comparison tolerant as described above (call once per session)."""
    from nbval.plugin import IPyNbCell

    if getattr(IPyNbCell.compare_outputs, "_numbers_tolerated", False):
        return
    strict_compare = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        skip = tuple(skip_compare or self.parent.skip_compare)
        fresh_slots, stored_slots = _slots(test, skip), _slots(ref, skip)
        for key, stored_list in stored_slots.items():
            fresh_list = fresh_slots.get(key, [])
            if len(fresh_list) != len(stored_list):
                continue  # nbval reports the different number of outputs
            for (fresh_holder, fresh_key), (stored_holder, stored_key) in zip(
                fresh_list, stored_list, strict=True
            ):
                new, stored = fresh_holder[fresh_key], stored_holder[stored_key]
                if isinstance(new, str) and isinstance(stored, str) and new != stored:
                    if numbers_agree(self.sanitize(stored), self.sanitize(new)):
                        fresh_holder[fresh_key] = stored
        return strict_compare(self, test, ref, skip_compare)

    compare_outputs._numbers_tolerated = True
    IPyNbCell.compare_outputs = compare_outputs
