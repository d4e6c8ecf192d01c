#!/usr/bin/env node
// A `solc` command-line stand-in backed by solcjs (the official compiler built to WebAssembly).
// py-solc-x and brownie only call `<exe> --version` and `<exe> --standard-json [--allow-paths P]
// [--base-path P]`; this answers both. Imports are read from disk relative to the base path, the
// allowed paths and the working directory. Output is written synchronously so a pipe never truncates it.
"use strict";
const fs = require("fs");
const path = require("path");

function loadSolc() {
  const candidates = [
    process.env.TEGRID_SOLCJS_MODULE,
    path.resolve(__dirname, "..", "..", "node_modules", "solc"),
    path.resolve(process.cwd(), "node_modules", "solc"),
  ].filter(Boolean);
  for (const candidate of candidates) {
    if (fs.existsSync(candidate)) return require(candidate);
  }
  process.stderr.write("solcjs shim: npm package 'solc' not found (run `make setup`)\n");
  process.exit(1);
}

function writeAllSync(fd, text) {
  const buf = Buffer.from(text, "utf8");
  let offset = 0;
  while (offset < buf.length) {
    try {
      offset += fs.writeSync(fd, buf, offset, buf.length - offset);
    } catch (err) {
      if (err.code !== "EAGAIN") throw err;
    }
  }
}

function optionValues(argv, name) {
  const values = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === name && i + 1 < argv.length) values.push(...argv[i + 1].split(","));
    else if (argv[i].startsWith(name + "=")) values.push(...argv[i].slice(name.length + 1).split(","));
  }
  return values.filter((v) => v.length > 0);
}

function main() {
  const argv = process.argv.slice(2);
  const solc = loadSolc();
  if (argv.includes("--version")) {
    writeAllSync(1, "solc, the solidity compiler commandline interface\nVersion: " + solc.version() + "\n");
    return 0;
  }
  if (!argv.includes("--standard-json")) {
    writeAllSync(2, "solcjs shim: only --version and --standard-json are supported\n");
    return 1;
  }
  const roots = [...optionValues(argv, "--base-path"), ...optionValues(argv, "--allow-paths"), process.cwd()];
  const findImports = (importPath) => {
    const tries = path.isAbsolute(importPath) ? [importPath] : roots.map((r) => path.resolve(r, importPath));
    for (const candidate of tries) {
      if (fs.existsSync(candidate) && fs.statSync(candidate).isFile()) {
        return { contents: fs.readFileSync(candidate, "utf8") };
      }
    }
    return { error: "File not found: " + importPath + " (searched " + roots.join(", ") + ")" };
  };
  const input = fs.readFileSync(0, "utf8");
  const output = solc.compile(input, { import: findImports });
  writeAllSync(1, output);
  return 0;
}

process.exitCode = main();
