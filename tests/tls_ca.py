"""The test CA: the lab's throwaway PKI (tools/testpki.py), under the name the tests import."""

from tools.testpki import SERVER_NAME, ServerCert, make_ca, make_pki, make_server_cert

__all__ = ["SERVER_NAME", "ServerCert", "make_ca", "make_pki", "make_server_cert"]
