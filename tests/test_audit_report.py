"""``matcher-audit verify --html``: the report of a real log names every release and checkpoint;
a tampered log gives a failing report and the same exit code 1 as without --html."""

from __future__ import annotations

import re

from click.testing import CliRunner
from matcher_client.audit_cli import main as audit_main

from matcher.log.entries import canonical_json
from tests import test_audit

log = test_audit.log  # the fixture: three released jobs and one refused, on a real server


def _verify(log, tmp_path, *extra):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(audit_main, ["verify", "--server", log.served.address, "--token", log.auditor,
                                             "--key", log.operator.keys.signer.verifier_key, "--html", str(out),
                                             *extra])
    return result, out.read_text() if out.exists() else None


def test_html_report_names_every_release_and_checkpoint(log, tmp_path):
    result, html = _verify(log, tmp_path)
    assert result.exit_code == 0, result.output
    assert "OK: 4 entries verified" in result.output  # the printed summary is unchanged
    assert 'id="verdict">VERIFIED: 4 entries' in html
    releases = html[html.index('<table id="releases">'):html.index('<table id="budgets">')]
    for report in log.reports:
        assert f"<code>{report['job_id']}</code>" in releases
    assert releases.count("<tr>") == 1 + 3 and "k = 3" in releases and "min_list_size = 10" in releases
    assert "noise none: every released cell at least k = 3" in releases
    checkpoints = html[html.index('<table id="checkpoints">'):html.index('<table id="releases">')]
    assert re.findall(r"<td class=num>(\d+)</td>", checkpoints) == ["1", "2", "3", "4"]
    assert checkpoints.count("OK (pinned key)") == 4 and "matcher.test" in checkpoints
    budgets = html[html.index('<table id="budgets">'):]
    assert "<td>shop</td><td class=num>3</td><td class=num>0</td><td class=num>1</td>" in budgets
    assert log.auditor not in html and log.merchant not in html and "<script" not in html


def test_tampered_log_gives_a_failing_report_and_exit_1(log, tmp_path):
    entry = log.entry(1)
    entry["released"]["a"]["matched"] += 1
    log.sql("UPDATE log_entries SET data = ? WHERE idx = 1", [canonical_json(entry)])
    result, html = _verify(log, tmp_path)
    assert result.exit_code == 1 and "VIOLATION: entry 1 is not the entry the log signed" in result.output
    assert 'class="verdict fail"' in html and "entry 1 is not the entry the log signed" in html
    assert "VERIFIED" not in html and '<table id="releases">' not in html
