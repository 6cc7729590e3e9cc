"""The clients teams really use, against the running portal: LangChain's ChatOpenAI, the
official openai package for Node.js (from npm, when node is on the machine), and curl
running the README's own examples."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from usage.models import UsageRecord

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)


def test_langchain_chat_openai_invokes_and_streams(catalog, team, inference_key, live_portal):
    from langchain_openai import ChatOpenAI

    _, secret = inference_key
    chat = ChatOpenAI(
        model="gpt-4o", base_url=f"{live_portal.url}/v1", api_key=secret, max_retries=0
    )
    assert chat.invoke("Hello").content
    assert "".join(chunk.content for chunk in chat.stream("Hello again"))
    rows = UsageRecord.objects.filter(team=team, status="ok")
    assert rows.count() == 2 and {r.model for r in rows} == {"gpt-4o"}
    assert {r.streamed for r in rows} == {False, True}


NODE_SCRIPT = """
const OpenAI = require("openai");
(async () => {
  const client = new OpenAI({ baseURL: process.argv[2], apiKey: process.argv[3], maxRetries: 0 });
  const answer = await client.chat.completions.create({
    model: "deepseek-v4-flash", messages: [{ role: "user", content: "Hi from Node" }],
  });
  let streamed = "";
  const stream = await client.chat.completions.create({
    model: "deepseek-v4-flash", messages: [{ role: "user", content: "Stream" }], stream: true,
  });
  for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content || "";
  const models = await client.models.list();
  console.log(JSON.stringify({
    answer: answer.choices[0].message.content, streamed, models: models.data.length,
  }));
})().catch((error) => { console.error(String(error)); process.exit(1); });
"""


@pytest.fixture(scope="session")
def node_openai(tmp_path_factory):
    """The openai package for Node.js, installed from npm into a scratch folder."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not on this machine (they are on CI's)")
    folder = tmp_path_factory.mktemp("node-openai")
    subprocess.run(
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "openai@^5"],
        cwd=folder,
        check=True,
        timeout=300,
    )
    (folder / "client.js").write_text(NODE_SCRIPT)
    return folder


def test_the_node_openai_package_calls_and_streams(
    catalog, team, inference_key, live_portal, node_openai
):
    _, secret = inference_key
    done = subprocess.run(
        ["node", "client.js", f"{live_portal.url}/v1", secret],
        cwd=node_openai,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"] and result["streamed"] and result["models"] > 5
    rows = UsageRecord.objects.filter(team=team, status="ok")
    assert rows.count() == 2 and {r.streamed for r in rows} == {False, True}


def readme_curl_examples() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = " ".join(b for b in blocks if "curl " in b).replace("\\\n", " ")
    return [line.strip() for line in commands.splitlines() if line.strip().startswith("curl ")]


def test_the_readmes_curl_examples_work(catalog, team, inference_key, live_portal):
    if not shutil.which("curl"):
        pytest.fail("curl is not on this machine")
    _, secret = inference_key
    examples = readme_curl_examples()
    assert len(examples) >= 2
    for example in examples:
        command = example.replace("http://127.0.0.1:8000", live_portal.url).replace("tgk_…", secret)
        done = subprocess.run(
            ["bash", "-c", command + " -f"], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, (example, done.stderr)
        assert json.loads(done.stdout)
    assert UsageRecord.objects.filter(team=team, status="ok").count() == 1
