// The node `jose` snippet of docs/verifying.md ("Node.js, jose"), as it is there, fed by
// environment variables instead of constants: ISSUER, AUDIENCE, ALG and TOKEN.
// tests/test_verifier.py runs it against the tokens of its local issuer.
//
// Prints the verified payload as JSON; a token that does not verify makes node exit non-zero.

import { createRemoteJWKSet, jwtVerify } from 'jose'

const token = process.env.TOKEN
const issuer = process.env.ISSUER
const JWKS = createRemoteJWKSet(new URL(`${issuer}/.well-known/jwks.json`))

const { payload } = await jwtVerify(token, JWKS, {
  issuer,
  audience: process.env.AUDIENCE,
  typ: 'at+jwt',
  algorithms: [process.env.ALG],
  clockTolerance: 30,
  requiredClaims: ['sub', 'client_id', 'iat', 'jti'],
})
console.log(JSON.stringify(payload))
