"""The peer side of benches/peer.rs: one run of the OpenAI Agents SDK for
Python against the same local OpenAI-compatible mock, streaming, with one
trivial function tool. Prints {"seconds": wall time of the run}."""

import asyncio
import json
import os
import sys
import time

from openai import AsyncOpenAI
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

set_tracing_disabled(True)


@function_tool
def read_file(path: str) -> str:
    """Read a file (a stub: the benchmark measures the loop, not the tool)."""
    return "ok"


async def main() -> None:
    steps = int(sys.argv[1])
    client = AsyncOpenAI(base_url=os.environ["BASE_URL"], api_key="bench")
    agent = Agent(
        name="bench",
        instructions="Be brief.",
        tools=[read_file],
        model=OpenAIChatCompletionsModel(model="mock-model", openai_client=client),
    )
    start = time.perf_counter()
    result = Runner.run_streamed(agent, "go", max_turns=steps + 5)
    async for _ in result.stream_events():
        pass
    print(json.dumps({"seconds": time.perf_counter() - start, "final": str(result.final_output)}))


asyncio.run(main())
