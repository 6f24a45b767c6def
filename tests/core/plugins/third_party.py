"""A module installed by another distribution, found through the entry point."""

from typing import Any

from modules.context import Context
from modules.module import ExpansionModule
from modules.observable import Observable
from modules.results import Answer


class Echo(ExpansionModule):
    name = "echo"
    title = "Echo"
    description = "Answer the value it was given."
    input_types = ("domain",)
    third_party = False

    async def enrich(self, observable: Observable, config: Any, ctx: Context) -> Answer:
        answer = ctx.answer()
        answer.add_attribute("text", observable.value, "Other")
        return answer
