// A resource server and an app checking Tessera's tokens with node `jose` (panva) and the JWKS
// alone (CONTRACT.md, "Offline verification"): the ID token as OpenID Connect says (typ JWT, aud
// the client id), the access token as RFC 9068 says (typ at+jwt, aud the resource).
//
//   node verify_tokens.mjs < {"jwks_uri", "issuer", "client_id", "audience", "id_token", "access_token"}
//     prints {"id_token": {"header", "payload"}, "access_token": {...}, "refused": {...}}
//
// Any failure of the two verifications themselves is one JSON object on stderr and exit status 1.

import { createRemoteJWKSet, jwtVerify } from 'jose'

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

function describe(error) {
  return { name: error?.name, code: error?.code, message: error?.message, claim: error?.claim, reason: error?.reason }
}

async function refusal(token, jwks, options) {
  try {
    await jwtVerify(token, jwks, options)
    return null
  } catch (error) {
    return describe(error)
  }
}

async function main(input) {
  const jwks = createRemoteJWKSet(new URL(input.jwks_uri))
  const asIdToken = { issuer: input.issuer, audience: input.client_id, typ: 'JWT' }
  const asAccessToken = { issuer: input.issuer, audience: input.audience, typ: 'at+jwt', requiredClaims: ['jti', 'client_id', 'scope'] }
  const idToken = await jwtVerify(input.id_token, jwks, { ...asIdToken, requiredClaims: ['sub', 'auth_time', 'sid'] })
  const accessToken = await jwtVerify(input.access_token, jwks, asAccessToken)
  return {
    id_token: { header: idToken.protectedHeader, payload: idToken.payload },
    access_token: { header: accessToken.protectedHeader, payload: accessToken.payload },
    // RFC 8725 section 3.11: explicit typing keeps one kind of token from passing for the other.
    refused: {
      id_token_as_access_token: await refusal(input.id_token, jwks, { ...asAccessToken, audience: input.client_id }),
      access_token_as_id_token: await refusal(input.access_token, jwks, { ...asIdToken, audience: input.audience }),
    },
  }
}

try {
  process.stdout.write(JSON.stringify(await main(await readStdin())) + '\n')
} catch (error) {
  process.stderr.write(JSON.stringify(describe(error)) + '\n')
  process.exit(1)
}
