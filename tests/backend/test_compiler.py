"""The compiler adapter: pinned version, standard JSON through py-solc-x, readable errors."""

from __future__ import annotations

import json
import subprocess

import pytest

from backend.chain import compiler
from backend.errors import CompileError


def _input(source: str, outputs: list[str] | None = None) -> dict:
    return {
        "language": "Solidity",
        "sources": {"Sample.sol": {"content": source}},
        "settings": {
            "evmVersion": compiler.evm_version(),
            "remappings": ["@openzeppelin=node_modules/@openzeppelin"],
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {"*": {"*": outputs or ["abi", "evm.bytecode.object"]}},
        },
    }


def _large_contract(functions: int) -> str:
    body = "\n".join(
        f"    function f{i}(uint256 a, uint256 b) external pure returns (uint256) "
        f"{{ return a * {i + 1} + b / {i + 2}; }}"
        for i in range(functions)
    )
    head = f"// SPDX-License-Identifier: MIT\npragma solidity {compiler.pinned_version()};\n"
    return f"{head}contract Big {{\n{body}\n}}\n"


def test_ensure_compiler_reports_pinned_version() -> None:
    info = compiler.ensure_compiler()
    assert info.version == "0.8.28"
    assert compiler.executable_version(info.path) == "0.8.28"


def test_compile_standard_imports_openzeppelin() -> None:
    source = (
        "// SPDX-License-Identifier: MIT\npragma solidity 0.8.28;\n"
        'import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";\n'
        'contract Sample is ERC20 { constructor() ERC20("Sample", "SMP") {} }\n'
    )
    out = compiler.compile_standard(_input(source))
    sample = out["contracts"]["Sample.sol"]["Sample"]
    assert {item.get("name") for item in sample["abi"]} >= {"transfer", "balanceOf", "Transfer"}
    assert len(sample["evm"]["bytecode"]["object"]) > 1000


def test_compile_standard_large_output_is_complete() -> None:
    raw = subprocess.run(
        [str(compiler.ensure_compiler().path), "--standard-json"],
        input=json.dumps(
            _input(_large_contract(300), ["abi", "evm.bytecode", "evm.deployedBytecode"])
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(raw.encode()) > 64 * 1024
    parsed = json.loads(raw)
    abi = parsed["contracts"]["Sample.sol"]["Big"]["abi"]
    assert len(abi) == 300


def test_compile_standard_syntax_error_is_compiler_message() -> None:
    source = (
        "// SPDX-License-Identifier: MIT\npragma solidity 0.8.28;\n"
        "contract Broken { uint256 x = ; }\n"
    )
    with pytest.raises(CompileError) as excinfo:
        compiler.compile_standard(_input(source))
    message = str(excinfo.value)
    assert "ParserError" in message
    assert "Sample.sol:3" in message
