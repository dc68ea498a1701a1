// Validates KEDA objects (a JSON array, from policy.py) against KEDA's own
// schemas, as generated from KEDA's CRDs into the @kubernetes-models/keda
// package (installed by .ci/check-deploy).
import { readFileSync } from "node:fs";
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const models = { ScaledObject, TriggerAuthentication };

const [file] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
for (const obj of objects) {
  try {
    new models[obj.kind](obj).validate();
    console.log(`${obj.kind}/${obj.metadata.name}: valid against KEDA's CRD schema`);
  } catch (e) {
    failed += 1;
    console.log(`${obj.kind}/${obj.metadata?.name}: ${e.message}`);
  }
}
if (objects.length === 0) {
  console.log(`${file}: no KEDA object to check`);
}
process.exit(failed ? 1 : 0);
