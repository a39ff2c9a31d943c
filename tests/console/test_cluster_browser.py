"""The console of a cluster node (``[cluster]``) in a real browser: the Cluster page lists the
nodes and who owns the partitions (``GET /v1/cluster``), against ``meterd run`` on one real
NATS server. A daemon without ``[cluster]`` shows no Cluster link (the other console tests'
daemon)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster.servers import running_cluster
from tests.cluster.test_node import node_config
from tests.procs.daemon import running_daemon


def test_the_cluster_page_shows_the_nodes_and_the_owners_of_the_partitions(
    browser: Any, tmp_path: Path
) -> None:
    with running_cluster(tmp_path / "nats", 1) as nats:
        config = node_config(tmp_path / "n1", nats)
        with running_daemon(tmp_path / "n1", config_path=config.path) as node:
            assert node.wait_for_log(lambda lines: any("meterd_started" in x for x in lines))
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            try:
                page = context.new_page()
                page.set_default_timeout(15_000)
                page.goto(node.api_url + "/")
                page.fill("#token", config.api.admin_token)
                page.click("#login button[type=submit]")
                page.click("#nav-cluster")
                page.wait_for_selector("#cluster-nodes tr[data-node='n1']")
                row = page.locator("#cluster-nodes tr[data-node='n1']")
                assert row.locator("td").all_inner_texts() == ["n1 (this node)", "live", "16"]
                owner = page.locator("#cluster-owners tr[data-owner='n1'] td")
                owner.first.wait_for()
                texts = owner.all_inner_texts()
                assert texts[:2] == ["n1", "16"]
                assert texts[2] not in ("", "—")  # the epochs of its tenures
                page.locator("#cluster-none-behind").wait_for()  # an idle node: no lag
            finally:
                context.close()


#: The console's navigation without ``[cluster]``, in page order.
NAV_WITHOUT_CLUSTER = ["Tree", "Ingest", "Accounts", "Corrections", "Quarantine"]


def test_a_daemon_without_cluster_shows_no_cluster_link(page: Any) -> None:
    """The navigation is shown with every other page's link, and the Cluster link is in it
    but hidden (a page that never rendered the navigation fails here, not only one that
    shows the link)."""
    nav = page.locator("#nav")
    assert nav.is_visible()
    shown = [text.strip() for text in nav.locator("a:visible").all_inner_texts()]
    assert shown == NAV_WITHOUT_CLUSTER
    cluster = nav.locator("a#nav-cluster")
    assert cluster.count() == 1
    assert cluster.is_hidden()
