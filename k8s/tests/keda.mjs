// Validates ScaledObjects (a JSON array, from policy.py) against KEDA's own
// ScaledObject schema, as generated from KEDA's CRD into the
// @kubernetes-models/keda package (installed by .ci/check-deploy).
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const [file] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
for (const obj of objects) {
  try {
    new ScaledObject(obj).validate();
    console.log(`ScaledObject/${obj.metadata.name}: valid against KEDA's CRD schema`);
  } catch (e) {
    failed += 1;
    console.log(`ScaledObject/${obj.metadata?.name}: ${e.message}`);
  }
}
if (objects.length === 0) {
  console.log(`${file}: no ScaledObject to check`);
}
process.exit(failed ? 1 : 0);
