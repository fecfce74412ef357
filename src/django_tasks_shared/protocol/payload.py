"""Cheap upper bounds of a value's JSON size, so that the usual small payloads (ids, short
strings, numbers, None) skip `json.dumps` on the hot paths: a client's arguments at enqueue
(client/backend.py) and a worker's return value (worker/execution.py), both checked against
MAX_PAYLOAD.

    json_bound(value)  by exact type (a subclass takes the full path): None / bool -> 5 bytes,
                       a float -> 24 (its longest repr), an int below 2**63 -> 20, a str -> 12
                       per character (\\ud83d\\ude00 for one emoji) + 2 quotes; else None
"""

_SMALL = {type(None): 5, bool: 5, float: 24}


def json_bound(value):
    """An upper bound of len(json.dumps(value)) when it is cheap to know, else None."""
    kind = type(value)
    bound = _SMALL.get(kind)
    if bound is not None:
        return bound
    if kind is int and -(2**63) < value < 2**63:
        return 20
    if kind is str:
        return 12 * len(value) + 2
    return None


def arguments_bound(args, kwargs):
    """An upper bound of len(json.dumps([list(args), dict(kwargs)])) when every argument is such
    a scalar (and every key a str), else None: normalize_json leaves those unchanged."""
    bound = 8  # [[], {}]
    for value in args:
        size = json_bound(value)
        if size is None:
            return None
        bound += size + 2
    for key, value in kwargs.items():
        size = json_bound(value)
        if size is None or type(key) is not str:
            return None
        bound += size + 12 * len(key) + 6
    return bound
