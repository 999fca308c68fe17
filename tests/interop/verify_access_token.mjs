// A resource server checking a Tessera access token with node `jose` (panva) and the JWKS alone,
// as RFC 9068 section 4 says (typ at+jwt, iss, aud, exp): for tokens made by token exchange
// (RFC 8693), whose `act` names who acts on the subject's behalf.
//
//   node verify_access_token.mjs < {"jwks_uri", "issuer", "audience", "access_token"}
//     prints {"header", "payload"}
//
// A token that does not verify is one JSON object on stderr and exit status 1.

import { createRemoteJWKSet, jwtVerify } from 'jose'

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

try {
  const input = await readStdin()
  const jwks = createRemoteJWKSet(new URL(input.jwks_uri))
  const verified = await jwtVerify(input.access_token, jwks, {
    issuer: input.issuer, audience: input.audience, typ: 'at+jwt', requiredClaims: ['sub', 'jti', 'client_id', 'scope'],
  })
  process.stdout.write(JSON.stringify({ header: verified.protectedHeader, payload: verified.payload }) + '\n')
} catch (error) {
  process.stderr.write(JSON.stringify({ name: error?.name, code: error?.code, message: error?.message }) + '\n')
  process.exit(1)
}
