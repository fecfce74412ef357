"""The web page, the metrics endpoint and the cancel / enqueue-again actions (a Django app part).

    urls.py (django_tasks_shared.urls) ──> views.py ──> access.py (who may see / act)
                                             │  one `overview` / `get` / `health` round trip
                                             ├─> present.py (snapshot -> template context, SVG)
                                             └─> metrics.py (snapshot -> Prometheus text)
Templates and the small script and stylesheet ship in the package (no CDN, no network).
"""
