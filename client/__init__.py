"""The relay client library and the Flower agent (ClientApp)."""
