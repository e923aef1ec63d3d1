"""FAKE `vllm.lora.request` (test double): `LoRARequest` with the real 0.33.0 fields."""

from dataclasses import dataclass


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.lora_name, str) or not isinstance(self.lora_int_id, int) \
                or self.lora_int_id < 1 or not isinstance(self.lora_path, str):
            raise TypeError("fake vllm: LoRARequest(lora_name: str, lora_int_id: int >= 1, lora_path: str)")
