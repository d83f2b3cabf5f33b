"""Attacks through `pip install`: a package, or a cell steering pip, tries to put files
outside the session's site directory, to run code when the session starts, or to
reach another session's packages."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Session, ZygoteClient, load_policy
from tests.package_index import module_wheel, simple_index, wheel
from tests.security.harness import open_session
from tests.zygotes import stop_zygote

pytestmark = [pytest.mark.anyio, pytest.mark.attack]

ROOT = Path(__file__).resolve().parents[2]
INDEX = "/mnt/data/index"


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZygoteClient]:
    """Sessions with installs on, from an index in their own workspace."""
    policy = load_policy(ROOT / "tests" / "policies" / "test.toml")
    packages = policy.packages.model_copy(
        update={"install": "index", "index_url": f"file://{INDEX}"}
    )
    limits = policy.limits.model_copy(update={"wall_timeout_s": 60.0, "max_timeout_s": 60.0})
    policy = policy.model_copy(update={"packages": packages, "limits": limits})
    client = ZygoteClient(policy, str(tmp_path_factory.mktemp("state")))
    client.start()
    yield client
    stop_zygote(client)


async def python(session: Session, code: str) -> str:
    outcome = await session.run_python(code, timeout=60)
    assert outcome.reply.status in ("ok", "error"), outcome.reply
    return outcome.reply.stdout + (outcome.reply.value or "") + (outcome.reply.error or "")


async def publish(session: Session, dists: dict[str, list[tuple[str, bytes]]]) -> None:
    """Write a simple index into the session's workspace, from inside the session."""
    files = {path: base64.b64encode(data).decode() for path, data in simple_index(dists).items()}
    await python(
        session,
        "import base64, os\n"
        f"for path, data in {files!r}.items():\n"
        f"    os.makedirs(os.path.dirname('{INDEX}/' + path), exist_ok=True)\n"
        f"    open('{INDEX}/' + path, 'wb').write(base64.b64decode(data))\n",
    )


def raw_wheel(name: str, members: dict[str, str]) -> tuple[str, bytes]:
    """A wheel whose member names are written as given, however hostile."""
    file_name, good = wheel(name, "0.1", {})
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(buffer, "w") as target:
        for item in source.infolist():
            target.writestr(item, source.read(item))
        for member, text in members.items():
            target.writestr(zipfile.ZipInfo(member), text)
    return file_name, buffer.getvalue()


WHAT_IS_THERE = (
    "import os\n"
    "print(sorted(n for n in os.listdir('/mnt/data') if n != 'index'))\n"
    "print(sorted(os.listdir('/tmp')))\n"
    "print(sorted(os.listdir('/mnt/data/.packages')) if os.path.isdir('/mnt/data/.packages')"
    " else None)\n"
)


@pytest.mark.parametrize(
    "member",
    [
        "../escaped.py",
        "../../../tmp/escaped.py",
        "/tmp/escaped.py",
        "hostile-0.1.data/data/../../../escaped.py",
        "hostile-0.1.data/scripts/escaped",
        "hostile-0.1.data/headers/../../escaped.h",
    ],
)
async def test_a_wheel_places_nothing_outside_the_site_directory(
    zygote: ZygoteClient, member: str
) -> None:
    async with open_session(zygote) as session:
        await publish(session, {"hostile": [raw_wheel("hostile", {member: "x = 1\n"})]})
        said = await python(session, "%pip install hostile")
        there = await python(session, WHAT_IS_THERE)
        workspace, tmp, site = there.splitlines()[-3:]
        assert "escaped" not in there, said + there
        assert workspace in ("[]", "['.packages']"), there
        assert tmp == "[]", there
        # Installed (its data and scripts left out) or refused whole: never in part.
        assert site in (
            "[]",
            "['__pycache__', 'hostile-0.1.dist-info']",
            "['hostile-0.1.dist-info']",
        ), said + there


async def test_a_pth_file_runs_nothing_when_the_session_starts_again(
    zygote: ZygoteClient,
) -> None:
    async with open_session(zygote) as session:
        trap = "import os; open('/mnt/data/pth_ran', 'w').close()\n"
        await publish(session, {"startup": [wheel("startup", "0.1", {"startup.pth": trap})]})
        assert "Successfully installed" in await python(session, "%pip install startup")
        await session.restart()
        assert "False" in await python(session, "import os; os.path.exists('/mnt/data/pth_ran')")


async def test_pip_variables_a_cell_sets_do_not_steer_the_install(zygote: ZygoteClient) -> None:
    async with open_session(zygote) as session:
        await publish(session, {"steered": [module_wheel("steered")]})
        said = await python(
            session,
            "%env PIP_TARGET=/mnt/data/elsewhere\n"
            "%env PIP_PREFIX=/mnt/data/elsewhere\n"
            "%env PIP_USER=1\n"
            "%env PIP_CONFIG_FILE=/mnt/data/pip.conf\n"
            "open('/mnt/data/pip.conf', 'w').write('[install]\\ntarget = /mnt/data/elsewhere\\n')\n"
            "%pip install steered\n",
        )
        assert "Successfully installed steered-0.1" in said, said
        there = await python(session, WHAT_IS_THERE)
        assert "elsewhere" not in there
        assert "steered.py" in there


async def test_another_session_sees_neither_the_package_nor_its_directory(
    zygote: ZygoteClient,
) -> None:
    async with open_session(zygote) as owner, open_session(zygote) as other:
        await publish(owner, {"mine": [module_wheel("mine")]})
        assert "Successfully installed" in await python(owner, "%pip install mine")
        said = await python(
            other,
            "import os\n"
            "try:\n    import mine\n    print('imported')\n"
            "except ImportError:\n    print('absent')\n"
            "print(os.path.exists('/mnt/data/.packages'))\n"
            f"try:\n    os.listdir({owner.workspace + '/.packages'!r})\n    print('listed')\n"
            "except OSError:\n    print('refused')\n",
        )
        assert said.splitlines()[-3:] == ["absent", "False", "refused"], said


@pytest.mark.parametrize(
    "planted",
    [
        ".packages/runpy.py",
        ".packages/pip/__init__.py",
        ".packages/pip/__main__.py",
        ".packages/json.py",
        "json.py",  # the workspace is pip's working directory for list
    ],
)
async def test_a_module_in_the_workspace_does_not_replace_what_pip_runs_on(
    zygote: ZygoteClient, planted: str
) -> None:
    """A wheel (or the session) shipping runpy or pip does not take over later pip runs."""
    async with open_session(zygote) as session:
        trap = "open('/mnt/data/pip_hijacked', 'w').close()\n"
        await python(
            session,
            "import os\n"
            f"path = os.path.join('/mnt/data', {planted!r})\n"
            "os.makedirs(os.path.dirname(path), exist_ok=True)\n"
            f"open(path, 'w').write({trap!r})\n",
        )
        said = await python(session, "%pip list")
        assert "Package" in said, said  # pip itself ran
        assert "False" in await python(
            session, "import os; os.path.exists('/mnt/data/pip_hijacked')"
        )
