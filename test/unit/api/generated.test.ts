import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { renderProtoTypes } from '../../../scripts/proto-types.ts';
import { customResourceDefinitions, renderChartCrdFiles, renderCrdFiles } from '../../../src/api/crds.ts';

// The CRD YAML in deploy/ and the chart is generated from src/api, the wire
// types in src/gen from proto/; this fails
// when someone edits one without the other (fix: npm run generate).
describe('generated CRD files', () => {
  for (const [path, content] of [...renderCrdFiles(), ...renderChartCrdFiles(), ...renderProtoTypes()]) {
    it(`${path} is up to date`, () => {
      expect(readFileSync(path, 'utf8'), `${path} is stale: run npm run generate`).toBe(content);
    });
  }

  it('uses only what a structural schema allows', () => {
    const text = JSON.stringify(customResourceDefinitions());
    for (const forbidden of ['"const"', '"anyOf"', '"patternProperties"', '"$id"', '"exclusiveMinimum":0']) {
      expect(text).not.toContain(forbidden);
    }
  });
});
