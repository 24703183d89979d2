#!/bin/sh
# Certificates for the TLS tests (spec/c/test_tls.c), made with the openssl command in DIR:
#   ca.pem ca.key           the test CA
#   server.pem server.key   for localhost and 127.0.0.1, by the CA
#   wrong.pem               for wrong.example only, by the CA (same key)
#   expired.pem             for localhost and 127.0.0.1, valid in January 2020 only, by the CA
#                           (OpenSSL 3.0's x509 has no -not_before/-not_after: `openssl ca`
#                           takes -startdate/-enddate)
#   unknown.pem             for localhost and 127.0.0.1, by another CA (other-ca.pem)
#   client.pem client.key   a client certificate, by the CA
# EC P-256 keys: quick to make; PP_TLS_KEY=rsa makes RSA-2048 ones (as most servers have; the
# handshake benchmark compares both). Usage: [PP_TLS_KEY=rsa] tls_certs.sh DIR
set -eu
cd "$1"
if [ "${PP_TLS_KEY:-ec}" = rsa ]; then
  newkey="-newkey rsa:2048 -nodes"
else
  newkey="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
fi
q() { "$@" >/dev/null 2>&1 || { echo "tls_certs.sh: failed: $*" >&2; exit 1; }; }

# shellcheck disable=SC2086
q openssl req -x509 $newkey -keyout ca.key -out ca.pem -days 30 -subj "/CN=peerpool test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
# shellcheck disable=SC2086
q openssl req -x509 $newkey -keyout other-ca.key -out other-ca.pem -days 30 \
  -subj "/CN=someone else's CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
# shellcheck disable=SC2086
q openssl req -new $newkey -keyout server.key -out server.csr -subj "/CN=localhost"
# shellcheck disable=SC2086
q openssl req -new $newkey -keyout client.key -out client.csr -subj "/CN=peerpool client"

printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >good.ext
printf 'subjectAltName=DNS:wrong.example\nextendedKeyUsage=serverAuth\n' >wrong.ext
printf 'extendedKeyUsage=clientAuth\n' >client.ext

sign() { # sign CSR OUT EXT CA
  q openssl x509 -req -in "$1" -CA "$4.pem" -CAkey "$4.key" -CAcreateserial -out "$2" -days 30 \
    -extfile "$3"
}
sign server.csr server.pem good.ext ca
sign server.csr wrong.pem wrong.ext ca
sign server.csr unknown.pem good.ext other-ca
sign client.csr client.pem client.ext ca

mkdir -p db
: >db/index.txt
echo 1000 >db/serial
cat >ca.cnf <<'EOF'
[ca]
default_ca = test_ca
[test_ca]
database = db/index.txt
new_certs_dir = db
serial = db/serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
EOF
q openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in server.csr -out expired.pem \
  -startdate 20200101000000Z -enddate 20200201000000Z -extfile good.ext -notext
