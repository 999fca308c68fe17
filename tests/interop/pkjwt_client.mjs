// A service authenticating to Tessera with its own key pair through openid-client v6 (panva):
// discovery, client authentication `private_key_jwt` (client.PrivateKeyJwt, which signs a fresh
// assertion with a new jti for every request), a client_credentials grant, then introspection and
// revocation of the token it got, each with its own assertion. tests/test_private_key_jwt.py runs it.
//
//   node pkjwt_client.mjs < {"issuer", "client_id", "private_jwk" (with kid and alg), "scope", "resource"?}
//     prints {"tokens", "introspection", "revoked", "server_metadata"}
//
// Input comes on stdin, never in arguments, so that no private key shows in a process listing. Any
// failure is one JSON object on stderr and exit status 1.

import * as client from 'openid-client'
import * as jose from 'jose'

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

function describe(error) {
  return {
    name: error?.name,
    code: error?.code,
    message: error?.message,
    error: error?.error,
    error_description: error?.error_description,
    status: error?.status,
    cause: error?.cause instanceof Error ? error.cause.message : error?.cause,
  }
}

async function run(input) {
  const { kid, alg } = input.private_jwk
  const key = await jose.importJWK(input.private_jwk, alg)
  // Tessera under test listens on http://127.0.0.1; openid-client insists on https otherwise.
  const config = await client.discovery(
    new URL(input.issuer), input.client_id, undefined, client.PrivateKeyJwt({ key, kid }),
    { execute: [client.allowInsecureRequests] },
  )
  const parameters = { scope: input.scope }
  if (input.resource) parameters.resource = input.resource
  const tokens = await client.clientCredentialsGrant(config, parameters)
  const introspection = await client.tokenIntrospection(config, tokens.access_token)
  await client.tokenRevocation(config, tokens.access_token, { token_type_hint: 'access_token' }).catch((error) => {
    // RFC 7009 section 2.2.1: a client_credentials token is not revocable here; what matters is that
    // the client authenticated (an authentication failure would be invalid_client).
    if (error?.error !== 'unsupported_token_type') throw error
  })
  return { tokens: { ...tokens }, introspection, revoked: true, server_metadata: config.serverMetadata() }
}

try {
  process.stdout.write(JSON.stringify(await run(await readStdin())) + '\n')
} catch (error) {
  process.stderr.write(JSON.stringify(describe(error)) + '\n')
  process.exit(1)
}
