"""Counts in words, the same in every log line and report: "1 worker", "2 workers"."""


def plural(count, word, many=None):
    """`count` and `word`, in the plural unless count is 1: plural(2, "task") == "2 tasks"."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {many or word + 's'}"
