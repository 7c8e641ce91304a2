"""PromQL test-script blocks that are known to fail, each with the reason.

Keys are ``file:line`` of the ``eval`` line (``v2.42.0/`` prefix for the old corpus).
The conformance test fails on any failure not listed here *and* on any listed block
that passes, so this list can only shrink.
"""

from __future__ import annotations

# promql-parser decodes the Go escape "\xff" to U+00FF (a valid UTF-8 label name);
# Go keeps the raw byte 0xFF, an invalid label name, so Prometheus fails the query.
_PARSER_XFF = "promql-parser reads the Go escape \\xff as U+00FF, a valid label name; Go sees a raw 0xFF byte"

# Prometheus 3 accepts any UTF-8 label name; v2.42 rejected "invalid-label-name".
_UTF8_NAMES = "Prometheus 3 accepts any UTF-8 label name; v2.42 rejected 'invalid-label-name'"

# v2.42 expectations that Prometheus 3 (which we follow) changed on purpose: range selectors
# and the lookback window became left-open ((t-range, t] instead of [t-range, t]), so blocks
# evaluated exactly one interval after a sample now see one sample fewer; rate/increase
# extrapolation now caps at the zero point after the threshold check; subquery alignment.
_V2_SEMANTICS = "v2.42 semantics changed in Prometheus 3: left-open lookback and range windows"

KNOWN_FAILURES: dict[str, str] = {
    "functions.test:523": _PARSER_XFF,  # label_replace(testmetric, "\xff", "", "src", "(.*)")
    "v2.42.0/functions.test:298": _UTF8_NAMES,  # label_replace(testmetric, "invalid-label-name", "", "src", "(.*)")
    "v2.42.0/aggregators.test:300": _V2_SEMANTICS,  # topk(3, http_requests{job="api-server",group="production"})
    "v2.42.0/aggregators.test:305": _V2_SEMANTICS,  # bottomk(3, http_requests{job="api-server",group="production"})
    "v2.42.0/aggregators.test:315": _V2_SEMANTICS,  # topk(9999999999, http_requests{job="api-server",group="production"})
    "v2.42.0/aggregators.test:340": _V2_SEMANTICS,  # count_values("version", version)
    "v2.42.0/aggregators.test:346": _V2_SEMANTICS,  # count_values(((("version"))), version)
    "v2.42.0/aggregators.test:352": _V2_SEMANTICS,  # count_values without (instance)("version", version)
    "v2.42.0/aggregators.test:359": _V2_SEMANTICS,  # count_values without (instance)("job", version)
    "v2.42.0/aggregators.test:365": _V2_SEMANTICS,  # count_values by (job, group)("job", version)
    "v2.42.0/at_modifier.test:80": _V2_SEMANTICS,  # sum_over_time(sum_over_time(metric{job="1"}[100s] @ 100)[100s:25s] @ 5
    "v2.42.0/at_modifier.test:87": _V2_SEMANTICS,  # sum_over_time(sum_over_time(sum_over_time(metric{job="1"}[100s] @ 100)
    "v2.42.0/at_modifier.test:95": _V2_SEMANTICS,  # sum_over_time(sum_over_time(sum_over_time(metric{job="1"}[10s])[100s:2
    "v2.42.0/at_modifier.test:101": _V2_SEMANTICS,  # sum_over_time(sum_over_time(sum_over_time(metric{job="1"}[10s])[100s:2
    "v2.42.0/at_modifier.test:116": _V2_SEMANTICS,  # sum_over_time(sum_over_time(sum_over_time(metric{job="1"}[20s])[20s:10
    "v2.42.0/at_modifier.test:139": _V2_SEMANTICS,  # sum_over_time(minute(metric @ 1500)[100s:10s])
    "v2.42.0/at_modifier.test:147": _V2_SEMANTICS,  # sum_over_time(minute()[50m:1m] @ 6000)
    "v2.42.0/at_modifier.test:151": _V2_SEMANTICS,  # sum_over_time(minute()[50m:1m] @ 6000 offset 5m)
    "v2.42.0/at_modifier.test:156": _V2_SEMANTICS,  # sum_over_time(vector(time())[100s:1s] @ 3000)
    "v2.42.0/at_modifier.test:160": _V2_SEMANTICS,  # sum_over_time(vector(time())[100s:1s] @ 3000 offset 600s)
    "v2.42.0/at_modifier.test:164": _V2_SEMANTICS,  # sum_over_time(timestamp(metric{job="1"} @ 10)[100s:10s] @ 3000)
    "v2.42.0/functions.test:8": _V2_SEMANTICS,  # resets(http_requests[5m])
    "v2.42.0/functions.test:18": _V2_SEMANTICS,  # resets(http_requests[30m])
    "v2.42.0/functions.test:31": _V2_SEMANTICS,  # changes(http_requests[5m])
    "v2.42.0/functions.test:36": _V2_SEMANTICS,  # changes(http_requests[20m])
    "v2.42.0/functions.test:41": _V2_SEMANTICS,  # changes(http_requests[30m])
    "v2.42.0/functions.test:46": _V2_SEMANTICS,  # changes(http_requests[50m])
    "v2.42.0/functions.test:51": _V2_SEMANTICS,  # changes((http_requests[50m]))
    "v2.42.0/functions.test:64": _V2_SEMANTICS,  # changes(x[15m])
    "v2.42.0/functions.test:76": _V2_SEMANTICS,  # increase(http_requests[50m])
    "v2.42.0/functions.test:104": _V2_SEMANTICS,  # rate(testcounter_reset_middle[50m])
    "v2.42.0/functions.test:108": _V2_SEMANTICS,  # rate(testcounter_reset_end[5m])
    "v2.42.0/functions.test:137": _V2_SEMANTICS,  # rate(testcounter_zero_cutoff[20m])
    "v2.42.0/functions.test:450": _V2_SEMANTICS,  # sort(http_requests)
    "v2.42.0/functions.test:461": _V2_SEMANTICS,  # sort_desc(http_requests)
    "v2.42.0/functions.test:520": _V2_SEMANTICS,  # avg_over_time(metric[1m])
    "v2.42.0/functions.test:523": _V2_SEMANTICS,  # sum_over_time(metric[1m])/count_over_time(metric[1m])
    "v2.42.0/functions.test:591": _V2_SEMANTICS,  # sum_over_time(metric8[1m])/count_over_time(metric8[1m])
    "v2.42.0/functions.test:601": _V2_SEMANTICS,  # avg_over_time(metric10[1m])
    "v2.42.0/functions.test:604": _V2_SEMANTICS,  # sum_over_time(metric10[1m])/count_over_time(metric10[1m])
    "v2.42.0/functions.test:612": _V2_SEMANTICS,  # stdvar_over_time(metric[1m])
    "v2.42.0/functions.test:615": _V2_SEMANTICS,  # stddev_over_time(metric[1m])
    "v2.42.0/functions.test:618": _V2_SEMANTICS,  # stddev_over_time((metric[1m]))
    "v2.42.0/functions.test:640": _V2_SEMANTICS,  # quantile_over_time(0, data[1m])
    "v2.42.0/functions.test:645": _V2_SEMANTICS,  # quantile_over_time(0.5, data[1m])
    "v2.42.0/functions.test:650": _V2_SEMANTICS,  # quantile_over_time(0.75, data[1m])
    "v2.42.0/functions.test:655": _V2_SEMANTICS,  # quantile_over_time(0.8, data[1m])
    "v2.42.0/functions.test:790": _V2_SEMANTICS,  # max_over_time(data[1m])
    "v2.42.0/functions.test:889": _V2_SEMANTICS,  # absent_over_time(http_requests[5m])
    "v2.42.0/functions.test:894": _V2_SEMANTICS,  # absent_over_time(http_requests[6m])
    "v2.42.0/functions.test:896": _V2_SEMANTICS,  # absent_over_time(httpd_handshake_failures_total[1m])
    "v2.42.0/functions.test:951": _V2_SEMANTICS,  # present_over_time(http_requests[5m])
    "v2.42.0/functions.test:957": _V2_SEMANTICS,  # present_over_time(http_requests[6m])
    "v2.42.0/functions.test:961": _V2_SEMANTICS,  # present_over_time(httpd_handshake_failures_total[1m])
    "v2.42.0/functions.test:983": _V2_SEMANTICS,  # exp(exp_root_log)
    "v2.42.0/functions.test:987": _V2_SEMANTICS,  # exp(exp_root_log - 10)
    "v2.42.0/functions.test:991": _V2_SEMANTICS,  # exp(exp_root_log - 20)
    "v2.42.0/functions.test:995": _V2_SEMANTICS,  # ln(exp_root_log)
    "v2.42.0/functions.test:999": _V2_SEMANTICS,  # ln(exp_root_log - 10)
    "v2.42.0/functions.test:1003": _V2_SEMANTICS,  # ln(exp_root_log - 20)
    "v2.42.0/functions.test:1007": _V2_SEMANTICS,  # exp(ln(exp_root_log))
    "v2.42.0/functions.test:1011": _V2_SEMANTICS,  # sqrt(exp_root_log)
    "v2.42.0/functions.test:1015": _V2_SEMANTICS,  # log2(exp_root_log)
    "v2.42.0/functions.test:1019": _V2_SEMANTICS,  # log2(exp_root_log - 10)
    "v2.42.0/functions.test:1023": _V2_SEMANTICS,  # log2(exp_root_log - 20)
    "v2.42.0/functions.test:1027": _V2_SEMANTICS,  # log10(exp_root_log)
    "v2.42.0/functions.test:1031": _V2_SEMANTICS,  # log10(exp_root_log - 10)
    "v2.42.0/functions.test:1035": _V2_SEMANTICS,  # log10(exp_root_log - 20)
    "v2.42.0/histograms.test:96": _V2_SEMANTICS,  # histogram_quantile(0.2, rate(testhistogram_bucket[5m]))
    "v2.42.0/histograms.test:100": _V2_SEMANTICS,  # histogram_quantile(0.5, rate(testhistogram_bucket[5m]))
    "v2.42.0/histograms.test:104": _V2_SEMANTICS,  # histogram_quantile(0.8, rate(testhistogram_bucket[5m]))
    "v2.42.0/histograms.test:128": _V2_SEMANTICS,  # histogram_quantile(0.3, sum(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:131": _V2_SEMANTICS,  # histogram_quantile(0.5, sum(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:135": _V2_SEMANTICS,  # histogram_quantile(0.3, avg(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:138": _V2_SEMANTICS,  # histogram_quantile(0.5, avg(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:142": _V2_SEMANTICS,  # histogram_quantile(0.3, sum(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:146": _V2_SEMANTICS,  # histogram_quantile(0.5, sum(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:151": _V2_SEMANTICS,  # histogram_quantile(0.3, sum(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:155": _V2_SEMANTICS,  # histogram_quantile(0.5, sum(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:160": _V2_SEMANTICS,  # histogram_quantile(0.3, sum(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:166": _V2_SEMANTICS,  # histogram_quantile(0.5, sum(rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:173": _V2_SEMANTICS,  # histogram_quantile(0.3, rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:179": _V2_SEMANTICS,  # histogram_quantile(0.5, rate(request_duration_seconds_bucket[5m]))
    "v2.42.0/histograms.test:208": _V2_SEMANTICS,  # histogram_quantile(0.5, rate(mixed_bucket[5m]))
    "v2.42.0/histograms.test:212": _V2_SEMANTICS,  # histogram_quantile(0.75, rate(mixed_bucket[5m]))
    "v2.42.0/histograms.test:216": _V2_SEMANTICS,  # histogram_quantile(1, rate(mixed_bucket[5m]))
    "v2.42.0/histograms.test:225": _V2_SEMANTICS,  # histogram_quantile(0.2, rate(empty_bucket[5m]))
    "v2.42.0/operators.test:116": _V2_SEMANTICS,  # http_requests{job="api-server", group="canary"} + rate(http_requests{j
    "v2.42.0/operators.test:311": _V2_SEMANTICS,  # node_role * on (instance) group_right (role) node_var
    "v2.42.0/operators.test:314": _V2_SEMANTICS,  # node_var * on (instance) group_left (role) node_role
    "v2.42.0/operators.test:317": _V2_SEMANTICS,  # node_var * ignoring (role) group_left (role) node_role
    "v2.42.0/operators.test:320": _V2_SEMANTICS,  # node_role * ignoring (role) group_right (role) node_var
    "v2.42.0/operators.test:324": _V2_SEMANTICS,  # node_cpu * ignoring (role, mode) group_left (role) node_role
    "v2.42.0/operators.test:328": _V2_SEMANTICS,  # node_cpu * on (instance) group_left (role) node_role
    "v2.42.0/operators.test:334": _V2_SEMANTICS,  # node_cpu / on (instance) group_left sum by (instance,job)(node_cpu)
    "v2.42.0/operators.test:340": _V2_SEMANTICS,  # sum by (mode, job)(node_cpu) / on (job) group_left sum by (job)(node_c
    "v2.42.0/operators.test:344": _V2_SEMANTICS,  # sum(sum by (mode, job)(node_cpu) / on (job) group_left sum by (job)(no
    "v2.42.0/operators.test:348": _V2_SEMANTICS,  # node_cpu / ignoring (mode) group_left sum without (mode)(node_cpu)
    "v2.42.0/operators.test:354": _V2_SEMANTICS,  # node_cpu / ignoring (mode) group_left(dummy) sum without (mode)(node_c
    "v2.42.0/operators.test:360": _V2_SEMANTICS,  # sum without (instance)(node_cpu) / ignoring (mode) group_left sum with
    "v2.42.0/operators.test:364": _V2_SEMANTICS,  # sum(sum without (instance)(node_cpu) / ignoring (mode) group_left sum
    "v2.42.0/operators.test:369": _V2_SEMANTICS,  # node_cpu + on(dummy) group_left(foo) random*0
    "v2.42.0/operators.test:377": _V2_SEMANTICS,  # node_cpu > on(job, instance) group_left(target) threshold
    "v2.42.0/operators.test:382": _V2_SEMANTICS,  # node_cpu > on(job, instance) group_left(target) (threshold or on (job,
    "v2.42.0/operators.test:390": _V2_SEMANTICS,  # node_cpu + 2
    "v2.42.0/operators.test:396": _V2_SEMANTICS,  # node_cpu - 2
    "v2.42.0/operators.test:402": _V2_SEMANTICS,  # node_cpu / 2
    "v2.42.0/operators.test:408": _V2_SEMANTICS,  # node_cpu * 2
    "v2.42.0/operators.test:414": _V2_SEMANTICS,  # node_cpu ^ 2
    "v2.42.0/operators.test:420": _V2_SEMANTICS,  # node_cpu % 2
    "v2.42.0/operators.test:435": _V2_SEMANTICS,  # random + on() metricA
    "v2.42.0/operators.test:439": _V2_SEMANTICS,  # metricA + ignoring() metricB
    "v2.42.0/operators.test:442": _V2_SEMANTICS,  # metricA + metricB
    "v2.42.0/operators.test:460": _V2_SEMANTICS,  # test_total > bool test_smaller
    "v2.42.0/operators.test:463": _V2_SEMANTICS,  # test_total > test_smaller
    "v2.42.0/operators.test:466": _V2_SEMANTICS,  # test_total < bool test_smaller
    "v2.42.0/operators.test:479": _V2_SEMANTICS,  # trigy atan2 trigx
    "v2.42.0/operators.test:482": _V2_SEMANTICS,  # trigy atan2 trigNaN
    "v2.42.0/staleness.test:17": _V2_SEMANTICS,  # metric
    "v2.42.0/staleness.test:32": _V2_SEMANTICS,  # count_over_time(metric[10s])
    "v2.42.0/staleness.test:48": _V2_SEMANTICS,  # metric
    "v2.42.0/subquery.test:12": _V2_SEMANTICS,  # sum_over_time(metric[50s:10s])
    "v2.42.0/subquery.test:17": _V2_SEMANTICS,  # sum_over_time(metric[50s:10s])
    "v2.42.0/subquery.test:23": _V2_SEMANTICS,  # rate(metric[20s:5s])
    "v2.42.0/subquery.test:51": _V2_SEMANTICS,  # sum_over_time(metric1[30s:10s])
    "v2.42.0/subquery.test:56": _V2_SEMANTICS,  # sum_over_time(metric1[30s:5s])
    "v2.42.0/subquery.test:60": _V2_SEMANTICS,  # sum_over_time(metric1[30s:10s] offset 10s)
    "v2.42.0/subquery.test:80": _V2_SEMANTICS,  # rate(sum_over_time(metric1[30s:10s])[50s:10s])
    "v2.42.0/subquery.test:83": _V2_SEMANTICS,  # rate(sum_over_time(metric2[30s:10s])[50s:10s])
    "v2.42.0/subquery.test:86": _V2_SEMANTICS,  # rate(sum_over_time(metric3[30s:10s])[50s:10s])
    "v2.42.0/subquery.test:89": _V2_SEMANTICS,  # rate(sum_over_time((metric1+metric2+metric3)[30s:10s])[30s:10s])
    "v2.42.0/subquery.test:104": _V2_SEMANTICS,  # rate(metric[1m:10s])
    "v2.42.0/subquery.test:112": _V2_SEMANTICS,  # min_over_time(metric[10s:10s])
    "v2.42.0/trig_functions.test:8": _V2_SEMANTICS,  # sin(trig)
    "v2.42.0/trig_functions.test:13": _V2_SEMANTICS,  # cos(trig)
    "v2.42.0/trig_functions.test:18": _V2_SEMANTICS,  # tan(trig)
    "v2.42.0/trig_functions.test:23": _V2_SEMANTICS,  # asin(trig - 10.1)
    "v2.42.0/trig_functions.test:28": _V2_SEMANTICS,  # acos(trig - 10.1)
    "v2.42.0/trig_functions.test:33": _V2_SEMANTICS,  # atan(trig)
    "v2.42.0/trig_functions.test:38": _V2_SEMANTICS,  # sinh(trig)
    "v2.42.0/trig_functions.test:43": _V2_SEMANTICS,  # cosh(trig)
    "v2.42.0/trig_functions.test:48": _V2_SEMANTICS,  # tanh(trig)
    "v2.42.0/trig_functions.test:53": _V2_SEMANTICS,  # asinh(trig)
    "v2.42.0/trig_functions.test:58": _V2_SEMANTICS,  # acosh(trig)
    "v2.42.0/trig_functions.test:63": _V2_SEMANTICS,  # atanh(trig - 10.1)
    "v2.42.0/trig_functions.test:68": _V2_SEMANTICS,  # rad(trig)
    "v2.42.0/trig_functions.test:73": _V2_SEMANTICS,  # rad(trig - 10)
    "v2.42.0/trig_functions.test:78": _V2_SEMANTICS,  # rad(trig - 20)
    "v2.42.0/trig_functions.test:83": _V2_SEMANTICS,  # deg(trig)
    "v2.42.0/trig_functions.test:88": _V2_SEMANTICS,  # deg(trig - 10)
    "v2.42.0/trig_functions.test:93": _V2_SEMANTICS,  # deg(trig - 20)
}
