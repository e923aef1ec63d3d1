"""DSPy adapters tuned for small models."""

from __future__ import annotations

from dspy.adapters import ChatAdapter


class CompactChatAdapter(ChatAdapter):
    """ChatAdapter's `[[ ## field ## ]]` blocks with a one-line system message (the
    instructions) and a short reply reminder: a third of ChatAdapter's prompt tokens, which is
    what lets a very small model be trained on (and run) the format cheaply. Parsing is
    ChatAdapter's own."""

    def format_system_message(self, signature) -> str:
        return signature.instructions

    def user_message_output_requirements(self, signature) -> str:
        return "Reply with " + ", ".join(f"[[ ## {f} ## ]]" for f in signature.output_fields) + "."
