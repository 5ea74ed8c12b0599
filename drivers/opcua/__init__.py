"""OPC UA client driver (asyncua): subscriptions with polled fallback."""
