import pytest

from addon.rules.matching import Match, RuleIndex, parse_filter, parse_host_glob, parse_method, parse_path_glob


@pytest.mark.parametrize(
    "glob, host, port, hit",
    [
        # exact hosts, case-insensitive, any port unless pinned
        ("api.example.com", "api.example.com", 443, True),
        ("api.example.com", "API.Example.COM", 80, True),
        ("api.example.com", "xapi.example.com", 443, False),
        ("api.example.com:8443", "api.example.com", 8443, True),
        ("api.example.com:8443", "api.example.com", 443, False),
        # wildcards
        ("*.example.com", "a.b.example.com", 443, True),
        ("*.example.com", "example.com", 443, False),
        ("127.0.0.1:*", "127.0.0.1", 1234, True),
        # IPv6 literals
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]", "::1", 1, True),
    ],
)
def test_host_glob(glob, host, port, hit):
    assert parse_host_glob(glob).matches(host, port) is hit


def test_host_glob_knows_exact_hosts():
    assert parse_host_glob("A.com:1").exact == "a.com"
    assert parse_host_glob("*.a.com").exact is None


@pytest.mark.parametrize(
    "glob, broad",
    [
        # could match hosts nobody named: no two fixed labels pin them
        ("*", True), ("*.*:443", True), ("[a-z]*", True), ("[!.]*", True), ("*.com", True), ("api*", True),
        # named hosts, or a wildcard under a fixed domain
        ("*.example.com", False), ("api.example.com", False), ("localhost", False), ("127.0.0.1:*", False),
        ("api-?.example.com", False),
    ],
)
def test_too_broad_host_globs(glob, broad):
    assert parse_host_glob(glob).too_broad is broad


@pytest.mark.parametrize("bad", ["http://a.com", "a.com/x", "a b", "a.com:0", "a.com:x", "", "a[b"])
def test_bad_host_globs(bad):
    with pytest.raises(ValueError):
        parse_host_glob(bad)


def test_path_method_filter():
    assert parse_path_glob("/v1/*").match("/v1/chat/completions")
    assert not parse_path_glob("/v1/*").match("/v2/x")
    assert parse_method("post") == "POST"
    assert parse_filter("~q")
    for bad in (lambda: parse_path_glob("v1"), lambda: parse_method("P O"), lambda: parse_filter("~zz")):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.parametrize(
    "match, streaming, hit",
    [
        (Match(hosts=()), False, True),
        (Match(hosts=(), paths=(parse_path_glob("/v1/chat"),)), False, True),
        (Match(hosts=(), paths=(parse_path_glob("/v2/*"),)), False, False),
        (Match(hosts=(), methods=frozenset({"GET"})), False, False),
        (Match(hosts=(), methods=frozenset({"GET", "POST"})), False, True),
        (Match(hosts=(), stream=True), False, False),
        (Match(hosts=(), stream=True), True, True),
        (Match(hosts=(), stream=False), True, False),
        (Match(hosts=(), filter=parse_filter("~h X-Absent")), False, True),  # the filter is judged elsewhere
    ],
)
def test_matches_shape(match, streaming, hit):
    assert match.matches_shape("POST", "/v1/chat", streaming) is hit


class R:
    def __init__(self, *hosts):
        self.match = Match(hosts=tuple(parse_host_glob(h) for h in hosts))


def test_index_keeps_file_order_and_pins_ports():
    rules = [R("a.com"), R("*.com"), R("b.com"), R("a.com:8443"), R("A.COM")]
    index = RuleIndex(rules)
    assert index.candidates("a.com", 443) == (rules[0], rules[1], rules[4])
    assert index.candidates("a.com", 8443) == (rules[0], rules[1], rules[3], rules[4])
    assert index.candidates("b.com", 443) == (rules[1], rules[2])
    assert index.candidates("c.org", 443) == ()
    assert index.candidates("a.com", 443) == (rules[0], rules[1], rules[4])  # memoised answer is the same
