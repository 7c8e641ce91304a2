"""The schema renders to DDL for each deployment from one declaration."""

from __future__ import annotations

from stackwatch.storage.schema import LOGS, LOGS_HOT, PROMPT_CLEANUP, render_ddl


def test_embedded_and_single_server_use_plain_merge_tree() -> None:
    (ddl,) = render_ddl(LOGS_HOT, "sw")
    assert "CREATE TABLE IF NOT EXISTS `sw`.`logs_hot`" in ddl
    assert "ENGINE = MergeTree()" in ddl
    assert "ORDER BY (project, service, severity_number, toStartOfHour(timestamp), timestamp)" in ddl
    assert "PARTITION BY (toYYYYMMDD(timestamp), log_type)" in ddl
    assert "INDEX `idx_trace_id` trace_id TYPE bloom_filter(0.01)" in ddl
    assert "non_replicated_deduplication_window = 10000" in ddl
    assert "`message` String CODEC(ZSTD(3))" in ddl


def test_cluster_gets_replicated_local_tables_and_a_distributed_table() -> None:
    local, distributed = render_ddl(LOGS_HOT, "sw", cluster="prod")
    assert "`sw`.`logs_hot_local` ON CLUSTER `prod`" in local
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/sw/logs_hot_local', '{replica}')" in local
    assert "`sw`.`logs_hot` ON CLUSTER `prod` AS `sw`.`logs_hot_local`" in distributed
    assert "ENGINE = Distributed(`prod`, `sw`, `logs_hot_local`, rand())" in distributed


def test_the_search_table_is_a_merge_over_the_tiers() -> None:
    (ddl,) = render_ddl(LOGS, "sw")
    assert "ENGINE = Merge('sw', '^logs_(hot|warm)$')" in ddl


def test_executor_settings_go_with_every_table_and_the_table_wins() -> None:
    (server,) = render_ddl(LOGS_HOT, "sw")
    assert "cleanup_delay_period" not in server  # a ClickHouse server keeps its defaults
    embedded, existing = render_ddl(LOGS_HOT, "sw", extra_settings={**PROMPT_CLEANUP, "index_granularity": 1})
    assert "cleanup_delay_period = 1" in embedded and "max_cleanup_delay_period = 5" in embedded
    assert "index_granularity = 8192" in embedded and "index_granularity = 1" not in embedded
    # A table made before the settings existed gets them too (the table's own still win).
    assert existing.startswith("ALTER TABLE `sw`.`logs_hot` MODIFY SETTING cleanup_delay_period = 1")
    assert "index_granularity" not in existing
