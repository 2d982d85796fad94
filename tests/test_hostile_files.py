"""Hostile storages files: bounded time and memory, and one line with exit status 78 wherever they are loaded.

Limits under test: 4 MiB per file (only regular files are opened); once aliases are expanded, 100,000 values
and 8 Mi characters of text; 64 levels of nesting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from celery_selinon_storage import ConfigurationError, yaml_source
from celery_selinon_storage.specs import load_storages
from tests.custom_adapters import EnvironmentUrlStorage
from tests.workers import WorkerProcess

MAX_BYTES = 4 * 1024 * 1024
MAX_VALUES = 100_000
MAX_TEXT = 8 * 1024 * 1024
MAX_DEPTH = 64
#: Address space for each ``check`` or worker subprocess: far above what refusing a file needs.
CHECK_ADDRESS_SPACE = 1 << 30
WORKER_ADDRESS_SPACE = 2 << 30
ROOT = Path(__file__).resolve().parent.parent
POOLS = ("prefork", "threads", "solo", "eventlet", "gevent")
ENTRY = "storages:\n  - name: Results\n    classname: InMemoryStorage\n"


def write(tmp_path: Path, text: str, name: str = "storages.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, environ: dict[str, str] | None = None) -> ConfigurationError:
    """The error loading ``path`` raises; its message must be one printable, UTF-8 encodable line."""
    with pytest.raises(ConfigurationError) as caught:
        load_storages(path, environ=environ)
    message = str(caught.value)
    assert message.isprintable(), repr(message)
    message.encode("utf-8")
    return caught.value


def alias_bomb(levels: int) -> str:
    """``levels`` lists of nine aliases of the list before (9 ** (levels + 1) values expanded)."""
    lines = [
        ENTRY.rstrip("\n"),
        "    configuration:",
        "      a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    ]
    lines += [f"      a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    """A file whose deepest value sits ``depth`` collections down (the top-level mapping is level 1)."""
    inner = depth - 3  # top-level mapping, 'storages:' list, the entry's mapping
    return ENTRY + "    cache: " + "[" * inner + "]" * inner + "\n"


def compose(text: str) -> yaml.Node:
    """PyYAML's node graph of ``text`` (aliases are shared nodes, nothing is constructed)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert node is not None
    return node


def expanded_size(node: yaml.Node) -> int:
    """Values in ``node`` with every alias expanded (the test's own count, on PyYAML's node graph)."""
    if isinstance(node, yaml.ScalarNode):
        return 1
    if isinstance(node, yaml.SequenceNode):
        return 1 + sum(expanded_size(child) for child in node.value)
    assert isinstance(node, yaml.MappingNode)
    return 1 + sum(expanded_size(key) + expanded_size(value) for key, value in node.value)


def expanded_text(node: yaml.Node) -> int:
    """Characters in the scalars of ``node`` with every alias expanded."""
    if isinstance(node, yaml.ScalarNode):
        return len(node.value)
    if isinstance(node, yaml.SequenceNode):
        return sum(expanded_text(child) for child in node.value)
    assert isinstance(node, yaml.MappingNode)
    return sum(expanded_text(key) + expanded_text(value) for key, value in node.value)


def depth_of(node: yaml.Node) -> int:
    if isinstance(node, yaml.ScalarNode):
        return 0
    children = node.value if isinstance(node, yaml.SequenceNode) else [v for pair in node.value for v in pair]
    return 1 + max((depth_of(child) for child in children), default=0)


def values_file(count: int) -> str:
    """A valid file of exactly ``count`` values once expanded: a hundred-value anchor used many times."""
    fixed = 111  # the values outside the repetitions below (the test counts the whole file)
    hundreds, rest = divmod(count - fixed, 100)
    return (
        f"hundred: &h [{', '.join(['0'] * 99)}]\n"
        f"bulk: [{', '.join(['*h'] * hundreds + ['0'] * rest)}]\n" + ENTRY
    )


# ---- the file itself: only regular files, at most 4 MiB, never read past the limit -----------------


@pytest.mark.timeout(30)
def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "storages.yml"
    os.mkfifo(fifo)
    error = refused(fifo)
    assert str(error) == f"{fifo}: not a regular file (a FIFO); pass the path of the storages YAML file"


@pytest.mark.parametrize(
    ("path", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_a_device_is_refused(path: str, kind: str) -> None:
    error = refused(Path(path))
    assert str(error) == f"{path}: not a regular file ({kind}); pass the path of the storages YAML file"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path)
    assert (
        str(error) == f"{tmp_path}: not a regular file (a directory); pass the path of the storages YAML file"
    )


def test_a_file_over_the_limit_is_refused_by_its_size_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "storages.yml"
    path.write_text(ENTRY)
    os.truncate(path, 50 * 1024 * 1024)  # sparse: NUL bytes that would be a YAML error if read
    error = refused(path)
    assert str(error) == (
        f"{path}: the file is 52,428,800 bytes and a storages file may have at most 4,194,304 bytes (4 MiB); "
        "check that this is the right file, or keep the storages in a file of their own"
    )


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    padding = "# " + "x" * 78 + "\n"
    text = ENTRY + padding * ((MAX_BYTES - len(ENTRY)) // len(padding))
    text += "#" * (MAX_BYTES - len(text) - 1) + "\n"
    path = write(tmp_path, text)
    assert path.stat().st_size == MAX_BYTES
    [spec] = load_storages(path)
    assert spec.name == "Results"
    os.truncate(path, MAX_BYTES + 1)
    assert "the file is 4,194,305 bytes" in str(refused(path))


def test_reading_stops_after_the_limit_even_when_the_size_says_zero() -> None:
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0 and len(status.read_bytes()) > 64
    with pytest.raises(ConfigurationError) as caught:
        yaml_source.read_yaml_text(status, limit=64)
    assert str(caught.value) == (
        "/proc/self/status: the file holds more than 64 bytes and a storages file may have at most 64 bytes; "
        "check that this is the right file, or keep the storages in a file of their own"
    )


def test_text_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "storages.yml"
    path.write_bytes(b"storages:\n  - name: R\xe9sultats\n    classname: InMemoryStorage\n")
    assert str(refused(path)) == f"{path}:2: the file is not UTF-8 text (byte 0xe9); save it as UTF-8"


# ---- the YAML: values counted with aliases expanded, nesting, before any Python object is built ----


def test_an_alias_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    path = write(tmp_path, alias_bomb(levels=9))
    tracemalloc.start()
    try:
        error = refused(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.line == 10 and "more than 100,000 values once its aliases are expanded" in str(error)
    assert peak < 16 * 1024 * 1024, f"{peak:,} bytes to refuse a 1 KB file"


def test_exactly_the_value_limit_loads_and_one_more_is_refused(tmp_path: Path) -> None:
    at_limit = values_file(MAX_VALUES)
    assert expanded_size(compose(at_limit)) == MAX_VALUES
    [spec] = load_storages(write(tmp_path, at_limit))
    assert spec.name == "Results"

    over = values_file(MAX_VALUES + 1)
    assert expanded_size(compose(over)) == MAX_VALUES + 1
    error = refused(write(tmp_path, over, "over.yml"))
    assert error.line == 5 and "more than 100,000 values" in str(error)  # the 100,001st: the last value


def text_file(characters: int) -> str:
    """A valid file of exactly ``characters`` characters of text once expanded: one long value, eight copies."""
    fixed = len("big" + "copies" + "storages" + "name" + "Results" + "classname" + "InMemoryStorage")
    length = (characters - fixed - 1) // 9
    rest = characters - fixed - 9 * length  # at least 1
    return f"big: &b {'x' * length}\ncopies: [{', '.join(['*b'] * 8)}, {'y' * rest}]\n" + ENTRY


def test_exactly_the_text_limit_loads_and_one_more_character_is_refused(tmp_path: Path) -> None:
    at_limit = text_file(MAX_TEXT)
    assert expanded_text(compose(at_limit)) == MAX_TEXT
    [spec] = load_storages(write(tmp_path, at_limit))
    assert spec.name == "Results"

    over = text_file(MAX_TEXT + 1)
    assert expanded_text(compose(over)) == MAX_TEXT + 1
    error = refused(write(tmp_path, over, "over.yml"))
    assert error.line == 5 and "more than 8,388,608 characters of text once its aliases" in str(error)


def test_a_long_text_used_many_times_is_refused(tmp_path: Path) -> None:
    text = "x" * 1_000_000 + "${HOME}"  # 90,000 copies, each expanded on its own: 90 GB
    path = write(
        tmp_path,
        ENTRY + f"    configuration:\n      s: &s {text}\n      copies: [{', '.join(['*s'] * 90_000)}]\n",
    )
    error = refused(path)
    assert error.line == 6 and "more than 8,388,608 characters of text" in str(error)


def test_exactly_the_depth_limit_loads_and_one_more_level_is_refused(tmp_path: Path) -> None:
    assert depth_of(compose(nested(MAX_DEPTH))) == MAX_DEPTH
    [spec] = load_storages(write(tmp_path, nested(MAX_DEPTH)))
    assert spec.name == "Results"

    assert depth_of(compose(nested(MAX_DEPTH + 1))) == MAX_DEPTH + 1
    error = refused(write(tmp_path, nested(MAX_DEPTH + 1), "deeper.yml"))
    assert error.line == 4 and "nested more than 64 levels deep" in str(error)


@pytest.mark.parametrize("depth", [300, 5_000, 100_000])
def test_any_nesting_depth_is_one_line(tmp_path: Path, depth: int) -> None:
    block = "".join(f"{' ' * (6 + 2 * level)}- \n" for level in range(min(depth, 500)))  # block style too
    for text in (nested(depth), ENTRY + "    cache:\n" + block):
        error = refused(write(tmp_path, text))
        assert "nested more than 64 levels deep" in str(error)


def test_many_aliases_of_a_small_anchor_still_load(tmp_path: Path) -> None:
    text = "shared: &s {a: 1}\nuses: [" + ", ".join(["*s"] * 2_000) + "]\n" + ENTRY
    [spec] = load_storages(write(tmp_path, text))
    assert spec.name == "Results"


def test_a_merge_chain_within_the_limits_loads(tmp_path: Path) -> None:
    chain = ["m0: &m0 {k0: 0}"] + [f"m{i}: &m{i} {{<<: *m{i - 1}, k{i}: {i}}}" for i in range(1, 150)]
    path = write(tmp_path, "\n".join(chain) + "\n" + ENTRY + "    configuration: {max_records: 3}\n")
    [spec] = load_storages(path)
    assert dict(spec.options) == {"max_records": 3}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("1" * 5_000, "'" + "1" * 40 + "...'"),  # Python refuses int() of more than 4,300 digits
        ("!!int 0xZZ", "'0xZZ'"),
        ("!!float pi", "'pi'"),
        ("!!timestamp yesterday", "'yesterday'"),
    ],
)
def test_a_value_yaml_cannot_build_names_its_line(tmp_path: Path, value: str, shown: str) -> None:
    path = write(tmp_path, ENTRY + f"    cache:\n      when: {value}\n")
    error = refused(path)
    assert error.line == 5
    assert error.problem.startswith(f"cannot read the value {shown} as !!"), error.problem


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\x7f", "\x9b", "\ufffe"])
def test_a_character_yaml_refuses_is_named_with_its_line(tmp_path: Path, character: str) -> None:
    path = write(tmp_path, ENTRY + f"    # a comment {character}\n")
    error = refused(path)
    code = f"U+{ord(character):04X}"
    assert error.line == 4 and f"character {code} in column 17 is not allowed" in str(error)


# ---- names and messages: printable, one line, whatever the file or the adapter holds ----------------


@pytest.mark.parametrize(
    ("written", "shown"),
    [(r"\ud83d", r"'\ud83d'"), (r"\e[31mred", r"'\x1b[31mred'"), (r"a\tb", r"'a\tb'"), (r"\x00", r"'\x00'")],
)
def test_a_name_that_is_not_printable_text_is_refused(tmp_path: Path, written: str, shown: str) -> None:
    path = write(tmp_path, f'storages:\n  - name: "{written}"\n    classname: InMemoryStorage\n')
    error = refused(path)
    assert str(error) == (
        f"{path}:2: storage {shown}: the name must be printable text (no control characters or lone "
        "surrogates); rename the storage"
    )


def test_an_unprintable_file_name_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "bad\x1bname\udcff.yml"
    path.write_bytes(b"storages: []\n")
    error = refused(path)
    assert str(error).startswith(f"{tmp_path}/bad\\x1bname\\udcff.yml:1: 'storages:' must be")


def test_a_name_of_a_megabyte_is_cut_short_in_the_message(tmp_path: Path) -> None:
    name = "N" * 1_000_000
    path = write(tmp_path, "storages:\n" + f"  - name: {name}\n    classname: InMemoryStorage\n" * 2)
    error = refused(path)
    assert len(str(error)) < 1_000 + len(str(path))
    assert str(error) == (
        f"{path}:4: storage '{'N' * 100}...': the name is used twice (first on line 2); storage names must be unique"
    )


@pytest.mark.parametrize(
    ("classname", "module", "missing"),
    [
        ("DataStorage", "selinon", "__init__, connect, disconnect, is_connected, retrieve, store"),
        ("JsonStorage", "celery_selinon_storage.storages.base", "__init__, _open, _read, _remove, _write"),
    ],
)
def test_an_abstract_class_is_refused(tmp_path: Path, classname: str, module: str, missing: str) -> None:
    path = write(tmp_path, f"storages:\n  - name: R\n    classname: {classname}\n    import: {module}\n")
    error = refused(path)
    assert str(error) == (
        f"{path}:3: storage 'R': {classname!r} is an abstract class (it does not implement {missing}); "
        "name a class that implements them, such as a built-in storage"
    )


def test_a_custom_class_is_built_at_load_so_its_own_errors_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "storages:\n  - name: Legacy\n    classname: EnvironmentUrlStorage\n    import: tests.custom_adapters\n"
        "    configuration: {url: 'redis://{CSS_TEST_STORAGE_HOST}/0'}\n",
    )
    monkeypatch.delenv("CSS_TEST_STORAGE_HOST", raising=False)
    error = refused(path)
    assert str(error) == (
        f"{path}:5: storage 'Legacy': tests.custom_adapters.EnvironmentUrlStorage could not be built "
        "(KeyError: 'CSS_TEST_STORAGE_HOST'); fix its configuration or the environment it reads"
    )
    monkeypatch.setenv("CSS_TEST_STORAGE_HOST", "cache.internal")
    [spec] = load_storages(path)
    storage = spec.create()
    assert isinstance(storage, EnvironmentUrlStorage) and storage.url == "redis://cache.internal/0"


def test_an_adapter_message_of_many_lines_and_odd_characters_becomes_one_printable_line(
    tmp_path: Path,
) -> None:
    message = r"first line\nsecond line\r\n\e[2Jcleared \ud83d " + "long " * 200  # YAML escapes
    path = write(
        tmp_path,
        "storages:\n  - name: Loud\n    classname: RaisingStorage\n    import: tests.custom_adapters\n"
        f'    configuration: {{message: "{message}"}}\n',
    )
    error = refused(path)
    text = str(error)
    assert text.startswith(
        f"{path}:5: storage 'Loud': tests.custom_adapters.RaisingStorage could not be built "
        r"(RuntimeError: first line second line \x1b[2Jcleared \ud83d long long"
    )
    assert text.endswith("...); fix its configuration or the environment it reads")
    assert len(text) < len(str(path)) + 500


@pytest.mark.parametrize("variable", ["2024-02-30", "[" * 2_000, "1" * 5_000])
def test_environment_text_that_yaml_cannot_read_is_one_line(tmp_path: Path, variable: str) -> None:
    path = write(
        tmp_path,
        "storages:\n  - name: Cache\n    classname: RedisStorage\n"
        "    configuration: {url: 'redis://localhost', socket_timeout: '${CSS_TEST_TIMEOUT}'}\n",
    )
    error = refused(path, environ={"CSS_TEST_TIMEOUT": variable})
    assert error.storage == "Cache"


# ---- the same files through ``celery-selinon-storage check`` and a real worker under every pool ------

#: name -> (writes the file into a directory and returns its path, words the error line must hold)
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "alias bomb": (lambda d: write(d, alias_bomb(levels=9)), "more than 100,000 values"),
    "text bomb": (
        lambda d: write(
            d,
            ENTRY
            + f"    configuration:\n      s: &s {'x' * 1_000_000}${{HOME}}\n      copies: [{', '.join(['*s'] * 90_000)}]\n",
        ),
        "more than 8,388,608 characters of text",
    ),
    "300 levels": (lambda d: write(d, nested(300)), "nested more than 64 levels deep"),
    "control character": (
        lambda d: write(d, "# \x01\n" + ENTRY),
        "control character U+0001 in column 3 is not allowed",
    ),
    "lone surrogate name": (
        lambda d: write(d, 'storages:\n  - name: "\\ud83d"\n    classname: InMemoryStorage\n'),
        r"storage '\ud83d': the name must be printable text",
    ),
    "JsonStorage": (
        lambda d: write(
            d,
            "storages:\n  - name: R\n    classname: JsonStorage\n    import: celery_selinon_storage.storages.base\n",
        ),
        "'JsonStorage' is an abstract class",
    ),
    "DataStorage": (
        lambda d: write(d, "storages:\n  - name: R\n    classname: DataStorage\n    import: selinon\n"),
        "'DataStorage' is an abstract class",
    ),
    "custom __init__ raises": (
        lambda d: write(
            d,
            "storages:\n  - name: R\n    classname: EnvironmentUrlStorage\n    import: tests.custom_adapters\n",
        ),
        "EnvironmentUrlStorage could not be built (KeyError: 'CSS_TEST_UNSET_STORAGE_HOST')",
    ),
    "FIFO": (lambda d: _fifo(d / "fifo.yml"), "not a regular file (a FIFO)"),
    "/dev/zero": (lambda d: Path("/dev/zero"), "not a regular file (a character device)"),
    "50 MB": (lambda d: _sparse(d / "big.yml", 50 * 1024 * 1024), "the file is 52,428,800 bytes"),
}


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    path.write_text(ENTRY)
    os.truncate(path, size)
    return path


def assert_one_error_line(output: str, path: Path, words: str) -> None:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "celery-selinon-storage" in line]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"celery-selinon-storage: error: {path}"), errors[0]
    assert words in errors[0], errors[0]


@pytest.mark.parametrize("case", list(CASES))
def test_check_prints_one_line_and_exits_78(case: str, tmp_path: Path) -> None:
    make, words = CASES[case]
    path = make(tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "CSS_TEST_UNSET_STORAGE_HOST"}
    command = [sys.executable, "-m", "celery_selinon_storage", "check", "--no-connect", str(path)]
    done = subprocess.run(
        ["prlimit", f"--as={CHECK_ADDRESS_SPACE}", "--", *command],
        capture_output=True,
        timeout=120,  # a guard against the FIFO hanging, not a timing
        check=False,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    stderr = done.stderr.decode("utf-8")
    assert (done.returncode, done.stdout) == (78, b""), stderr
    assert stderr.count("\n") == 1
    assert_one_error_line(stderr, path, words)


@pytest.mark.worker
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("case", list(CASES))
def test_a_worker_under_every_pool_prints_one_line_and_exits_78(
    case: str, pool: str, tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    make, words = CASES[case]
    path = make(tmp_path)
    worker = workers(storages=path, pool=pool, concurrency=2)
    worker.env.pop("CSS_TEST_UNSET_STORAGE_HOST", None)
    worker.command = ["prlimit", f"--as={WORKER_ADDRESS_SPACE}", "--", *worker.command]
    status = worker.run_to_exit(timeout=120)
    assert status == 78, worker.output
    assert_one_error_line(worker.output, path, words)
