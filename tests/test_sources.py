"""Ingest sources (plugins/patentml_airflow/sources.py, downloads.py): what a run reads, what it may
read (roots, hosts, symlinks, ``..``, redirects), one work item per file, and downloads that resume,
are cached and are checked by size, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests import airflow_env  # noqa: F401  (configures Airflow and puts plugins/ on sys.path)
from tests.bulkserver import BulkServer, weekly_zip

UTC = dt.timezone.utc
FIXTURES = Path(__file__).parent / "fixtures" / "ingest"


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("x")


def _policy(*roots: Path | str, hosts: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    from patentml_airflow.sources import SourcePolicy

    return SourcePolicy(tuple(os.path.realpath(r) for r in roots), hosts)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BulkServer]:
    running = BulkServer(tmp_path / "www")
    yield running
    running.stop()


# -- selection ---------------------------------------------------------------------------------------
def test_weekly_files_are_picked_by_data_interval(tmp_path: Path) -> None:
    from patentml_airflow.sources import file_date, select

    assert file_date("ipg240102.zip") == dt.date(2024, 1, 2)
    assert file_date("https://bulkdata.uspto.gov/x/ipa231228.zip") == dt.date(2023, 12, 28)
    assert file_date("uspto-cpc-random.jsonl") is None and file_date("ipg991399.xml") is None
    _touch(tmp_path / "weekly", "ipg231226.zip", "ipg240102.zip", "ipg240109.zip", "ipa240104.xml.gz", ".ipg240102.zip")
    policy = _policy(tmp_path)
    # The run of the week ending Tuesday 2 Jan 2024 06:00 reads the file published that Tuesday.
    start, end = dt.datetime(2023, 12, 26, 6, tzinfo=UTC), dt.datetime(2024, 1, 2, 6, tzinfo=UTC)
    chosen = select([str(tmp_path / "weekly")], start, end, policy)
    assert [Path(p).name for p in chosen.selected] == ["ipg240102.zip"]
    assert sorted(Path(p).name for p in chosen.outside) == ["ipa240104.xml.gz", "ipg231226.zip", "ipg240109.zip"]
    everything = select([str(tmp_path / "weekly" / "ipg*.zip")], start, end, policy, by_interval=False)
    assert [Path(p).name for p in everything.selected] == ["ipg231226.zip", "ipg240102.zip", "ipg240109.zip"]
    # Without an interval (by_interval but no dates): every dated file.
    assert len(select([str(tmp_path / "weekly")], None, None, policy).selected) == 4


def test_latest_reads_the_newest_dated_files_of_each_source(tmp_path: Path) -> None:
    from patentml_airflow.sources import select

    _touch(tmp_path / "a", "ipg240102.zip", "ipg240116.zip", "ipg240109.zip", "notes.jsonl")
    _touch(tmp_path / "b", "ipg230103.zip")
    interval = (dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 1, 8, tzinfo=UTC))  # holds none of them
    chosen = select([str(tmp_path / "a"), str(tmp_path / "b")], *interval, _policy(tmp_path), latest=2)
    assert [Path(p).name for p in chosen.selected] == ["ipg240109.zip", "ipg240116.zip", "notes.jsonl", "ipg230103.zip"]
    assert [Path(p).name for p in chosen.outside] == ["ipg240102.zip"]


def test_folders_become_one_item_per_file_and_patentsview_tables_one_per_folder(tmp_path: Path) -> None:
    from patentml_airflow.sources import select, split_sources, work_items

    chosen = select(split_sources(f"{FIXTURES / 'patentsview'}, {FIXTURES / 'records.jsonl'}\n{FIXTURES / 'ipg180102.xml'}"),
                    None, None, _policy(FIXTURES))
    items = work_items(chosen.selected)
    assert [item["name"] for item in items] == ["patentsview/*.tsv", "records.jsonl", "ipg180102.xml"]
    assert sorted(Path(p).name for p in items[0]["sources"]) == ["g_cpc_current.tsv", "g_patent.tsv", "g_patent_abstract.tsv"]
    assert items[1]["sources"] == [str(FIXTURES / "records.jsonl")]


def test_missing_and_empty_sources_say_what_to_do(tmp_path: Path) -> None:
    from patentml_airflow.sources import SourceError, select

    with pytest.raises(SourceError, match="PATENTML_INGEST_SOURCE"):
        select([], None, None, _policy(tmp_path))
    with pytest.raises(SourceError, match="matched no file"):
        select([str(tmp_path / "nope" / "*.jsonl")], None, None, _policy(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no data file"):
        select([str(tmp_path / "empty")], None, None, _policy(tmp_path))


# -- what ingest may read ------------------------------------------------------------------------------
def test_local_sources_are_confined_to_the_roots(tmp_path: Path) -> None:
    from patentml_airflow.sources import SourceError, select

    root, elsewhere = tmp_path / "incoming", tmp_path / "elsewhere"
    _touch(root, "good.jsonl")
    _touch(elsewhere, "secret.jsonl")
    (root / "link.jsonl").symlink_to(elsewhere / "secret.jsonl")  # a file inside pointing out
    (root / "linkdir").symlink_to(elsewhere, target_is_directory=True)
    policy = _policy(root)
    refused = [
        "/proc/self/environ",  # where the Fernet key and database URLs are
        str(elsewhere / "secret.jsonl"),
        str(root / ".." / "elsewhere" / "secret.jsonl"),
        str(root / "link.jsonl"),
        str(root / "linkdir" / "secret.jsonl"),
        str(root / "linkdir"),
        str(root / ".." / "*" / "*.jsonl"),
        str(root / "*"),  # matches good.jsonl and the links: one link out refuses the whole source
        str(elsewhere / "does-not-exist.jsonl"),  # outside: refused before anyone learns whether it exists
    ]
    for source in refused:
        with pytest.raises(SourceError) as err:
            select([source], None, None, policy)
        message = str(err.value)
        assert "outside the folders ingest may read" in message and os.path.realpath(root) in message, source
        assert "PATENTML_INGEST_ROOTS" in message
    assert select([str(root / "good.jsonl")], None, None, policy).selected == [os.path.realpath(root / "good.jsonl")]
    # A root given through a symlink works: both sides are resolved.
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert select([str(root / "good.jsonl")], None, None, _policy(tmp_path / "alias")).selected


def test_roots_and_hosts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from patentml_airflow.sources import DEFAULT_URL_HOSTS, SourcePolicy, roots_for

    monkeypatch.delenv("PATENTML_INGEST_ROOTS", raising=False)
    monkeypatch.delenv("PATENTML_INGEST_URL_HOSTS", raising=False)
    default = SourcePolicy.from_env(tmp_path)
    assert default.roots == (os.path.realpath(tmp_path / "incoming"),) and default.url_hosts == DEFAULT_URL_HOSTS
    monkeypatch.setenv("PATENTML_INGEST_ROOTS", f"{tmp_path / 'a'}, {tmp_path / 'b c'}")
    monkeypatch.setenv("PATENTML_INGEST_URL_HOSTS", "Example.org,127.0.0.1:8080")
    policy = SourcePolicy.from_env(tmp_path)
    assert policy.roots == (os.path.realpath(tmp_path / "a"), os.path.realpath(tmp_path / "b c"))
    assert policy.url_hosts == ("example.org", "127.0.0.1:8080")
    assert roots_for([str(tmp_path / "d" / "*.jsonl"), "https://x/y/", str(tmp_path / "e.jsonl")]) == [
        os.path.realpath(tmp_path / "d"), os.path.realpath(tmp_path / "e.jsonl")]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://bulkdata.uspto.gov/data/patent/grant/redbook/fulltext/2025/", None),
        ("https://BULKDATA.uspto.gov/data/x.zip", None),
        ("https://s3.amazonaws.com/data.patentsview.org/download/g_patent.tsv.zip", None),
        ("https://s3.amazonaws.com/other-bucket/g_patent.tsv.zip", "host is not allowed"),
        ("https://s3.amazonaws.com/data.patentsview.org/../other-bucket/x.zip", "'..'"),
        ("https://s3.amazonaws.com/data.patentsview.org/%2e%2e/other-bucket/x.zip", "'..'"),
        ("https://bulkdata.uspto.gov:8443/data/x.zip", "host is not allowed"),
        ("http://169.254.169.254/latest/meta-data/", "host is not allowed"),
        ("https://user:pw@bulkdata.uspto.gov/x.zip", "credentials"),
        ("ftp://bulkdata.uspto.gov/x.zip", "only http(s)"),
        ("https://bulkdata.uspto.gov.evil.example/x.zip", "host is not allowed"),
        ("https://bulkdata.uspto.gov:http/x.zip", "host is not allowed"),
    ],
)
def test_urls_are_confined_to_the_allowed_hosts(url: str, problem: str | None) -> None:
    from patentml_airflow.sources import DEFAULT_URL_HOSTS, SourceError, SourcePolicy

    policy = SourcePolicy((), DEFAULT_URL_HOSTS)
    if problem is None:
        assert policy.url(url) == url
        return
    with pytest.raises(SourceError) as err:
        policy.url(url)
    assert problem in str(err.value) and "bulkdata.uspto.gov" in str(err.value) and "PATENTML_INGEST_URL_HOSTS" in str(err.value)


def test_other_schemes_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    from patentml_airflow.sources import SourceError, select

    with pytest.raises(SourceError, match="only local paths and http"):
        select(["file:///etc/passwd"], None, None, _policy(tmp_path))


def test_a_redirect_to_a_host_that_is_not_allowed_is_refused(server: BulkServer, tmp_path: Path) -> None:
    from patentml_airflow.downloads import download, list_url
    from patentml_airflow.sources import SourceError

    other = BulkServer(tmp_path / "other")
    try:
        weekly_zip(other.root / "2025", dt.date(2025, 1, 7), 0)
        server.server.redirects["/2025/ipg250107.zip"] = f"{other.url}/2025/ipg250107.zip"
        server.server.redirects["/2025/"] = f"{other.url}/2025/"
        policy = _policy(tmp_path, hosts=(server.netloc,))
        with pytest.raises(SourceError, match=f"URL '{other.url}/2025/ipg250107.zip' is refused"):
            download(f"{server.url}/2025/ipg250107.zip", tmp_path / "downloads", policy.url)
        with pytest.raises(SourceError, match="is refused: its host is not allowed"):
            list_url(f"{server.url}/2025/", policy.url, lambda p: True)
        assert other.requests == []  # never contacted
        assert not list((tmp_path / "downloads").rglob("ipg250107.zip"))
    finally:
        other.stop()


def test_last_interval_is_airflows_manual_interval() -> None:
    """The interval a run without a logical date reads: worked out by hand, and as Airflow infers it."""
    from airflow.timetables.interval import CronDataIntervalTimetable
    from pendulum import instance

    from patentml_airflow.sources import last_interval

    cron = "0 6 * * 2"  # the ingest default: Tuesdays 06:00
    wednesday = dt.datetime(2024, 1, 3, 12, tzinfo=UTC)
    assert last_interval(cron, "UTC", wednesday) == (dt.datetime(2023, 12, 26, 6, tzinfo=UTC),
                                                      dt.datetime(2024, 1, 2, 6, tzinfo=UTC))
    on_schedule = dt.datetime(2024, 1, 2, 6, tzinfo=UTC)
    assert last_interval(cron, "UTC", on_schedule)[1] == on_schedule
    timetable = CronDataIntervalTimetable(cron, "UTC")
    for moment in (wednesday, on_schedule, dt.datetime(2024, 1, 2, 5, 59, tzinfo=UTC), dt.datetime(2024, 3, 31, 1, 30, tzinfo=UTC)):
        airflow = timetable.infer_manual_data_interval(run_after=instance(moment))
        assert last_interval(cron, "UTC", moment) == (airflow.start, airflow.end), moment
    # In a timezone with daylight saving time the cron is read in local time.
    berlin = last_interval("0 6 * * 2", "Europe/Berlin", dt.datetime(2024, 7, 3, tzinfo=UTC))
    assert berlin == (dt.datetime(2024, 6, 25, 4, tzinfo=UTC), dt.datetime(2024, 7, 2, 4, tzinfo=UTC))


# -- downloads -------------------------------------------------------------------------------------------
def test_url_listing_is_filtered_by_interval_and_downloaded_once(server: BulkServer, tmp_path: Path) -> None:
    from patentml_airflow.sources import localize, select

    weekly_zip(server.root / "2024", dt.date(2024, 1, 2), 0)
    weekly_zip(server.root / "2024", dt.date(2024, 1, 9), 1)
    (server.root / "2024" / "README.txt").write_text("not data")
    policy = _policy(tmp_path, hosts=(server.netloc,))
    start, end = dt.datetime(2023, 12, 26, 6, tzinfo=UTC), dt.datetime(2024, 1, 2, 6, tzinfo=UTC)
    chosen = select([server.url + "/2024/"], start, end, policy)
    assert chosen.selected == [server.url + "/2024/ipg240102.zip"]
    assert chosen.outside == [server.url + "/2024/ipg240109.zip"]  # README.txt is no data file
    (local,) = localize(chosen.selected, tmp_path / "downloads", policy)
    assert Path(local).name == "ipg240102.zip" and Path(local).read_bytes() == (server.root / "2024" / "ipg240102.zip").read_bytes()
    assert not list((tmp_path / "downloads").rglob("*.part"))
    gets = [r for r in server.requests if r[0] == "GET" and r[1].endswith(".zip")]
    assert localize(chosen.selected, tmp_path / "downloads", policy) == [local]  # cached by URL
    assert [r for r in server.requests if r[0] == "GET" and r[1].endswith(".zip")] == gets  # only a HEAD more


def test_an_interrupted_download_resumes_with_a_range_request(server: BulkServer, tmp_path: Path) -> None:
    from patentml_airflow.downloads import download

    original = weekly_zip(server.root / "2025", dt.date(2025, 1, 7), 0).read_bytes()
    server.server.cuts["ipg250107.zip"] = [1000, 500]  # the first two answers break off
    local = download(f"{server.url}/2025/ipg250107.zip", tmp_path / "downloads", lambda u: u, attempts=3, backoff=0)
    assert local.read_bytes() == original
    assert [r[2] for r in server.requests if r[0] == "GET"] == [None, "bytes=1000-", "bytes=1500-"]


def test_a_download_that_fails_keeps_its_part_and_the_next_run_resumes(server: BulkServer, tmp_path: Path) -> None:
    from patentml_airflow.downloads import cache_path, download
    from patentml_airflow.sources import SourceError

    original = weekly_zip(server.root / "2025", dt.date(2025, 1, 14), 1).read_bytes()
    url = f"{server.url}/2025/ipg250114.zip"
    server.server.cuts["ipg250114.zip"] = [700]
    with pytest.raises(SourceError, match="failed after 1 attempts.*700 bytes so far are kept"):
        download(url, tmp_path / "downloads", lambda u: u, attempts=1)
    target = cache_path(url, tmp_path / "downloads")
    assert not target.exists() and target.with_name(target.name + ".part").stat().st_size == 700
    assert download(url, tmp_path / "downloads", lambda u: u, attempts=1).read_bytes() == original
    assert [r[2] for r in server.requests if r[0] == "GET"] == [None, "bytes=700-"]


def test_a_server_without_ranges_restarts_and_a_changed_file_is_fetched_again(server: BulkServer, tmp_path: Path) -> None:
    from patentml_airflow.downloads import download

    path = weekly_zip(server.root / "2025", dt.date(2025, 1, 21), 2)
    url = f"{server.url}/2025/ipg250121.zip"
    server.server.ranges = False
    server.server.cuts["ipg250121.zip"] = [300]
    assert download(url, tmp_path / "dl", lambda u: u, attempts=2, backoff=0).read_bytes() == path.read_bytes()
    # USPTO re-publishes a week: the size changes, so the cached copy is replaced.
    path.write_bytes(path.read_bytes() + b"\0" * 10)
    assert download(url, tmp_path / "dl", lambda u: u).read_bytes() == path.read_bytes()
    # An announced size that is never reached is no complete download.
    server.server.ranges = True
    server.server.cuts["ipg250121.zip"] = [10, 10]
    path.write_bytes(b"x" * 50)
    from patentml_airflow.sources import SourceError

    with pytest.raises(SourceError, match="failed after 2 attempts"):
        download(url, tmp_path / "dl", lambda u: u, attempts=2, backoff=0)


def test_files_of_one_remote_folder_share_a_cache_folder(tmp_path: Path) -> None:
    from patentml_airflow.downloads import cache_path

    base = "https://s3.amazonaws.com/data.patentsview.org/download/"
    paths = [cache_path(base + name, tmp_path) for name in ("g_patent.tsv.zip", "g_cpc_current.tsv.zip")]
    assert paths[0].parent == paths[1].parent and paths[0].name == "g_patent.tsv.zip"
    assert cache_path("https://example.org/other/g_patent.tsv.zip", tmp_path).parent != paths[0].parent
    assert cache_path("https://example.org/a/..", tmp_path).name == "download"
