"""Dashboard and alert-rule shaped PromQL queries over :mod:`promgen`'s data, from templates.

Each template is filled with every metric (and grouping label) it fits, so one shape is
checked over counters, histograms and gauges with their resets, gaps and late starts.
"""

from __future__ import annotations

COUNTERS = ("http_requests_total", "http_request_duration_seconds_count", "http_request_duration_seconds_sum")
GAUGES = ("process_resident_memory_bytes", "queue_depth", "node_cpu_utilization")
COUNTER_LABELS = {
    "http_requests_total": ("job", "instance", "route", "code", "method"),
    "http_request_duration_seconds_count": ("job", "instance", "route"),
    "http_request_duration_seconds_sum": ("job", "route"),
}
GAUGE_LABELS = {
    "process_resident_memory_bytes": ("job", "instance"),
    "queue_depth": ("job", "instance"),
    "node_cpu_utilization": ("job", "instance", "mode"),
}
BUCKET = "http_request_duration_seconds_bucket"
REQ = "http_requests_total"


def queries(at_s: int) -> list[str]:
    """The query list; ``at_s`` is a time inside the data for ``@`` modifiers."""
    q: list[str] = []
    for c in COUNTERS:
        for lb in COUNTER_LABELS[c]:
            q += [
                f"sum by ({lb}) (rate({c}[5m]))",
                f"sum by ({lb}) (increase({c}[10m]))",
                f"sum by ({lb}) (irate({c}[1m]))",
                f"max by ({lb}) (rate({c}[2m]))",
                f"topk(3, sum by ({lb}, instance) (rate({c}[5m])))",
            ]
        q += [
            f"rate({c}[5m])",
            f"increase({c}[1h])",
            f'rate({c}{{job="api"}}[3m])',
            f"resets({c}[30m])",
            f"changes({c}[10m])",
            f"sum(rate({c}[5m] offset 10m))",
            f"sum by (job) (rate({c}[5m] @ {at_s}))",
            f"sum without (instance) (rate({c}[5m]))",
            f"bottomk(2, rate({c}[5m]))",
            f"max_over_time(sum by (job) (rate({c}[5m]))[30m:1m])",
            f"avg_over_time(sum(rate({c}[5m]))[1h:5m])",
            f"predict_linear({c}[30m], 3600)",
            f"deriv(sum by (job) ({c})[20m:])",
            f"sum(rate({c}[5m])) > bool 10",
            f"rate({c}[5m]) > 1",
        ]
    for g in GAUGES:
        for lb in GAUGE_LABELS[g]:
            q += [
                f"avg by ({lb}) ({g})",
                f"max by ({lb}) ({g})",
                f"min by ({lb}) ({g})",
                f"sum by ({lb}) ({g})",
                f"count by ({lb}) ({g})",
                f"stddev by ({lb}) ({g})",
                f"stdvar by ({lb}) ({g})",
                f"quantile by ({lb}) (0.9, {g})",
                f"topk by ({lb}) (1, {g})",
                f"bottomk by ({lb}) (2, {g})",
                f"group by ({lb}) ({g})",
                f"avg by ({lb}) (avg_over_time({g}[10m]))",
            ]
        for fn in ("avg", "max", "min", "sum", "count", "stddev", "stdvar", "last", "present"):
            q.append(f"{fn}_over_time({g}[10m])")
        q += [
            f"quantile_over_time(0.95, {g}[15m])",
            f"deriv({g}[10m])",
            f"predict_linear({g}[30m], 1800)",
            f"delta({g}[10m])",
            f"idelta({g}[5m])",
            f"clamp({g}, 0.2, 300000000)",
            f"clamp_min({g}, 10)",
            f"clamp_max({g}, 10)",
            f"abs(-{g})",
            f"round({g}, 0.1)",
            f"sqrt({g})",
            f"ln({g} + 1)",
            f"log10({g} + 1)",
            f"{g} > 10",
            f"{g} >= bool 10",
            f"{g} == bool 0",
            f"{g} offset 7m",
            f"{g} @ {at_s}",
            f"timestamp({g})",
            f"-{g} * 2 + 1",
            f"topk(3, {g})",
            f'count_values("value", round({g}))',
            f"max_over_time({g}[20m:30s])",
            f'label_replace({g}, "host", "$1", "instance", "([^:]+):.*")',
            f'label_join({g}, "target", "/", "job", "instance")',
            f"sort_desc({g})",
            f"{g} / on(instance) group_left sum by (instance) ({g})",
            f"{g} - ignoring(mode) group_left avg by (job, instance) (node_cpu_utilization)",
        ]
    # Error ratios and the 5xx alert, the dashboard and alert staples.
    q += [
        f'sum by (route) (rate({REQ}{{code=~"5.."}}[5m])) / sum by (route) (rate({REQ}[5m]))',
        f'sum by (job) (rate({REQ}{{code="500"}}[5m])) / sum by (job) (rate({REQ}[5m])) > 0.01',
        f'sum by (job) (rate({REQ}{{code="500"}}[5m])) / sum by (job) (rate({REQ}[5m])) > bool 0.01',
        f'rate({REQ}{{code="500"}}[5m]) / ignoring(code) rate({REQ}{{code="200"}}[5m])',
        f"sum by (instance, code) (rate({REQ}[5m])) / on(instance) group_left sum by (instance) (rate({REQ}[5m]))",
        f"sum by (job, instance) (rate({REQ}[5m])) / on(job) group_left sum by (job) (rate({REQ}[5m]))",
        f"sum by (job) (rate({REQ}[5m])) / on(job) group_right sum by (job, instance) (rate({REQ}[5m]))",
        f'sum by (route) (increase({REQ}{{code!="200"}}[1h]))',
        f'sum(rate({REQ}{{route=~"/api/v1/r[01]", method="GET"}}[5m]))',
        f'sum(rate({REQ}{{route!~".*r0"}}[5m])) by (route)',
        f"sum by (route) (rate({REQ}[5m])) and on(route) sum by (route) (rate({REQ}[5m])) > 50",
        f"sum by (route) (rate({REQ}[5m])) unless on(route) sum by (route) (rate({REQ}[5m])) > 50",
        f'sum by (job) (rate({REQ}{{code="500"}}[5m])) or sum by (job) (rate({REQ}[5m])) * 0',
        "queue_depth and on(instance) up",
        "up unless on(instance) queue_depth",
        "queue_depth or on(instance) up",
        'absent(queue_depth{instance="10.0.0.3:9100"})',
        'absent(queue_depth{job="nope"})',
        'absent_over_time(queue_depth{instance="10.0.0.3:9100"}[5m])',
        "sum(up) by (job) == bool 3",
        "count(up == 1) by (job)",
        "scalar(sum(up)) * 2",
        "vector(1)",
        "time()",
        "hour()",
        "minute(timestamp(up))",
        "day_of_week()",
        "day_of_month(vector(time()))",
        "days_in_month(vector(time()))",
        "month()",
        "year()",
        "sort(sum by (instance) (rate(http_requests_total[5m])))",
        "sum by (route) (rate(http_request_duration_seconds_sum[5m])) / "
        "sum by (route) (rate(http_request_duration_seconds_count[5m]))",
        f"histogram_quantile(0.9, rate({BUCKET}[5m]))",
        f'histogram_quantile(0.5, rate({BUCKET}{{job="web"}}[10m]))',
        f"histogram_quantile(0.95, sum by (le) (rate({BUCKET}[5m])))",
        f"max_over_time(histogram_quantile(0.99, sum by (le) (rate({BUCKET}[5m])))[30m:1m])",
        f"histogram_quantile(0.95, sum by (le, route) (rate({BUCKET}[5m]))) > 0.5",
        f"histogram_quantile(0.9, sum by (le, job) (increase({BUCKET}[10m] offset 5m)))",
        "queue_depth[5m]",
        f"rate({REQ}[5m])[10m:1m]",
    ]
    for quant in ("0.5", "0.9", "0.95", "0.99"):
        for lb in ("route", "job", "instance"):
            q.append(f"histogram_quantile({quant}, sum by (le, {lb}) (rate({BUCKET}[5m])))")
    return q
