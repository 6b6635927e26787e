import { describe, expect, it } from 'vitest';
import { parseRequestHeaderConfig, RequestHeaderConfigError } from '../../../src/operator/data-api/request-header.ts';
import { createCa } from '../../../src/operator/tls/certs.ts';

// The data API's trust in the API server's request-header configuration: read
// from kube-system/extension-apiserver-authentication, refused with a reason
// naming the key when it cannot be used.

describe('request-header configuration', () => {
  it('reads the CA, allowed names and headers the API server publishes', async () => {
    const ca = await createCa({ validitySeconds: 3600 });
    const cfg = parseRequestHeaderConfig({
      'requestheader-client-ca-file': ca.certPem,
      'requestheader-allowed-names': '["front-proxy-client"]',
      'requestheader-username-headers': '["X-Remote-User"]',
      'requestheader-group-headers': '["X-Remote-Group"]',
      'requestheader-extra-headers-prefix': '["X-Remote-Extra-"]',
    });
    expect(cfg).toEqual({
      clientCa: ca.certPem,
      allowedNames: ['front-proxy-client'],
      usernameHeaders: ['X-Remote-User'],
      uidHeaders: [],
      groupHeaders: ['X-Remote-Group'],
      extraHeaderPrefixes: ['X-Remote-Extra-'],
    });
  });

  it.each([
    [{}, 'has no requestheader-client-ca-file'],
    [{ 'requestheader-client-ca-file': 'not a certificate' }, 'requestheader-client-ca-file is not a PEM certificate'],
    [{ 'requestheader-username-headers': '[' }, 'key requestheader-username-headers: not a JSON list'],
    [{ 'requestheader-username-headers': '[1]' }, 'key requestheader-username-headers: not a list of strings'],
    [{ 'requestheader-username-headers': '[]' }, 'requestheader-username-headers is empty'],
    [{ 'requestheader-allowed-names': '"x"' }, 'key requestheader-allowed-names: not a list of strings'],
  ])('refuses %o: %s', async (bad, message) => {
    const ca = await createCa({ validitySeconds: 3600 });
    const data: Record<string, string> = {
      'requestheader-client-ca-file': ca.certPem,
      'requestheader-username-headers': '["X-Remote-User"]',
      ...bad,
    };
    if (!('requestheader-client-ca-file' in bad) && Object.keys(bad).length === 0)
      delete data['requestheader-client-ca-file'];
    expect(() => parseRequestHeaderConfig(data)).toThrow(RequestHeaderConfigError);
    expect(() => parseRequestHeaderConfig(data)).toThrow(message);
  });
});
