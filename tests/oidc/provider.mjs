// The identity provider tests/oidc_provider.rs starts: panva's oidc-provider (OpenID
// certified), on an ephemeral loopback port, plain HTTP, with one confidential client
// ("cloakroom" / "s3cret"), PKCE required and its development login form. Prints the
// issuer URL on the first line of stdout, then serves until killed.
import http from 'node:http';
import Provider from 'oidc-provider';

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'cloakroom',
      client_secret: 's3cret',
      redirect_uris: ['https://app.test/.cloakroom/oidc/callback'],
      post_logout_redirect_uris: ['https://app.test/'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { methods: ['S256'], required: () => true },
    features: { devInteractions: { enabled: true } },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['groups'] },
    cookies: { keys: ['cloakroom-test-cookie-key'] },
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: `${id}@example.com`, email_verified: true, groups: ['staff', 'ops'] };
        },
      };
    },
  });
  // The proxy listens on a port chosen by the test run: any https redirect to it is
  // accepted here (a real provider registers the exact URI).
  provider.Client.prototype.redirectUriAllowed = function allowed(uri) {
    return uri.startsWith('https://app.test:');
  };
  provider.Client.prototype.postLogoutRedirectUriAllowed = () => true;
  server.on('request', provider.callback());
  process.stdout.write(`${issuer}\n`);
});
